//! Kernel structure offsets from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), for the exec hook: like the tracepoint
//! field offsets from tracefs, they differ between kernels, and the
//! programs are built without CO-RE relocations.
//!
//! A minimal reader: the type section is walked once to index types by
//! id; only struct/union members and the modifiers around them are
//! interpreted.

use std::{collections::HashMap, path::Path};

use agent_common::ExeOffsets;
use thiserror::Error;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not a BTF blob (bad magic or truncated header)")]
    Header(String),
    #[error("BTF type section is truncated at type {0}")]
    Truncated(u32),
    #[error("BTF type kind {kind} (type {id}) is unknown to this reader")]
    UnknownKind { kind: u32, id: u32 },
    #[error("struct {0} not found in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member} in the kernel's BTF")]
    NoMember { strukt: String, member: String },
}

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Anonymous struct/union nesting followed at most.
const MAX_NESTING: usize = 8;

struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    /// Size, or the referenced type for modifiers.
    size_or_type: u32,
    /// Byte offset of the members (struct/union) in the type section.
    members_at: usize,
    vlen: usize,
}

pub struct Btf {
    types: Vec<Type>,
    data: Vec<u8>,
    strings_at: usize,
    strings_len: usize,
    structs: HashMap<String, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Btf::parse(data, &path.display().to_string())
    }

    pub fn parse(data: Vec<u8>, name: &str) -> Result<Btf, BtfError> {
        let header = || BtfError::Header(name.to_string());
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(header());
        }
        let hdr_len = u32_at(&data, 4).ok_or_else(header)? as usize;
        let type_off = u32_at(&data, 8).ok_or_else(header)? as usize;
        let type_len = u32_at(&data, 12).ok_or_else(header)? as usize;
        let str_off = u32_at(&data, 16).ok_or_else(header)? as usize;
        let str_len = u32_at(&data, 20).ok_or_else(header)? as usize;
        let types_at = hdr_len + type_off;
        let strings_at = hdr_len + str_off;
        if types_at + type_len > data.len() || strings_at + str_len > data.len() {
            return Err(header());
        }
        // Type id 0 is void.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            members_at: 0,
            vlen: 0,
        }];
        let mut at = types_at;
        let end = types_at + type_len;
        while at < end {
            let id = types.len() as u32;
            let truncated = || BtfError::Truncated(id);
            let name_off = u32_at(&data, at).ok_or_else(truncated)?;
            let info = u32_at(&data, at + 4).ok_or_else(truncated)?;
            let size_or_type = u32_at(&data, at + 8).ok_or_else(truncated)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 != 0;
            let members_at = at + 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::UnknownKind { kind, id }),
            };
            at = members_at + extra;
            if at > end {
                return Err(truncated());
            }
            types.push(Type {
                name_off,
                kind,
                kind_flag,
                size_or_type,
                members_at,
                vlen,
            });
        }
        let mut btf = Btf {
            types,
            data,
            strings_at,
            strings_len: str_len,
            structs: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if ty.kind == KIND_STRUCT && ty.name_off != 0 {
                let name = btf.string(ty.name_off).to_string();
                // The first definition wins (vmlinux has one per name).
                btf.structs.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let start = self.strings_at + off as usize;
        let end = self.strings_at + self.strings_len;
        let Some(bytes) = self.data.get(start..end) else {
            return "";
        };
        let len = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..len]).unwrap_or("")
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            let Some(ty) = self.types.get(id as usize) else {
                return id;
            };
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type
                }
                _ => return id,
            }
        }
        id
    }

    /// Byte offset of `member` in the struct or union `id`, looking into
    /// anonymous struct/union members (`mm_struct` wraps its fields in one).
    fn member_in(&self, id: u32, member: &str, depth: usize) -> Option<u32> {
        let ty = self.types.get(self.resolve(id) as usize)?;
        if ty.kind != KIND_STRUCT && ty.kind != KIND_UNION {
            return None;
        }
        for i in 0..ty.vlen {
            let at = ty.members_at + 12 * i;
            let name_off = u32_at(&self.data, at)?;
            let member_type = u32_at(&self.data, at + 4)?;
            let raw = u32_at(&self.data, at + 8)?;
            // With kind_flag the low 24 bits are the bit offset.
            let bits = if ty.kind_flag { raw & 0x00ff_ffff } else { raw };
            if name_off != 0 && self.string(name_off) == member {
                return Some(bits / 8);
            }
            if name_off == 0
                && depth < MAX_NESTING
                && let Some(inner) = self.member_in(member_type, member, depth + 1)
            {
                return Some(bits / 8 + inner);
            }
        }
        None
    }

    pub fn offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        self.member_in(id, member, 0)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_string(),
                member: member.to_string(),
            })
    }

    /// The first of `members` that the struct has (fields renamed across
    /// kernel versions).
    fn offset_any(&self, strukt: &str, members: &[&str]) -> Result<u32, BtfError> {
        let mut last = None;
        for member in members {
            match self.offset(strukt, member) {
                Ok(off) => return Ok(off),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| BtfError::NoStruct(strukt.to_string())))
    }
}

/// The offsets the exec hook needs, from `btf`.
pub fn exe_offsets(btf: &Btf) -> Result<ExeOffsets, BtfError> {
    Ok(ExeOffsets {
        task_mm: btf.offset("task_struct", "mm")?,
        mm_exe_file: btf.offset("mm_struct", "exe_file")?,
        file_inode: btf.offset("file", "f_inode")?,
        inode_sb: btf.offset("inode", "i_sb")?,
        inode_ino: btf.offset("inode", "i_ino")?,
        inode_nlink: btf.offset_any("inode", &["__i_nlink", "i_nlink"])?,
        inode_size: btf.offset("inode", "i_size")?,
        // 6.7+ split the timespec64 into seconds and nanoseconds fields.
        inode_ctime_sec: btf.offset("inode", "i_ctime_sec")?,
        inode_ctime_nsec: btf.offset("inode", "i_ctime_nsec")?,
        sb_dev: btf.offset("super_block", "s_dev")?,
    })
}

/// Offsets from the running kernel, or all zero (the hook then only
/// clears entries at exec, as before) with the reason.
pub fn read_exe_offsets() -> (ExeOffsets, Option<String>) {
    match Btf::from_file(Path::new(VMLINUX)).and_then(|btf| exe_offsets(&btf)) {
        Ok(offsets) => (offsets, None),
        Err(err) => (ExeOffsets::default(), Some(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernels_exe_offsets_are_found() {
        let path = Path::new(VMLINUX);
        if !path.exists() {
            eprintln!("skipped: no {VMLINUX} on this machine");
            return;
        }
        let btf = Btf::from_file(path).expect("parse vmlinux BTF");
        let offsets = exe_offsets(&btf).expect("every exe field is found");
        assert_ne!(offsets.task_mm, 0, "task_struct.mm is not at offset 0");
        assert_ne!(offsets.mm_exe_file, 0, "mm_struct.exe_file is not at 0");
        assert!(
            offsets.inode_ctime_nsec > offsets.inode_ctime_sec,
            "{offsets:?}"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(vec![0; 10], "x").is_err());
        let mut blob = vec![0x9f, 0xeb, 1, 0, 24, 0, 0, 0];
        blob.extend([0, 0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(Btf::parse(blob, "x").is_err());
    }
}
