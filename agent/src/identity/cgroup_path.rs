//! Derives a process's systemd unit and container identity from its cgroup v2
//! path (the `0::` line of `/proc/PID/cgroup`).
//!
//! The path is attacker-influenced (container names, unit names) and may be
//! truncated or garbage, so parsing only ever uses `strip_prefix`/`split`
//! style operations that cannot panic on non-ASCII input.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ContainerRuntime {
    Docker,
    Containerd,
    Crio,
    Podman,
    Lxc,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CgroupInfo {
    /// The innermost systemd unit (".service", ".scope", ".socket", ...) that
    /// is NOT a container scope, e.g. "nginx.service", "session-3.scope",
    /// "user@1000.service". For user-manager units below user@UID.service, the
    /// innermost unit (e.g. "app-foo.service" below
    /// "user@1000.service/app.slice/") wins. Units that merely enclose a
    /// container (e.g. "containerd.service" hosting a pod cgroup) are not
    /// reported: the process belongs to the container, not to the runtime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The slice that contains the unit (or, without a unit, the container),
    /// e.g. "system.slice".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slice: Option<String>,
    /// Full 64-hex container id, lowercase (for LXC: the container name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_runtime: Option<ContainerRuntime>,
    /// Kubernetes pod UID, normalised to the dashed form (systemd driver
    /// escapes '-' as '_').
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// Unit types that can own a cgroup; `.slice` is tracked separately because it
/// groups units rather than being one.
const UNIT_SUFFIXES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];

/// Systemd-driver scope prefixes. "crio-conmon-…" and "libpod-conmon-…" fall
/// out naturally: the remainder after the prefix is not a 64-hex id.
const SCOPE_PREFIXES: [(&str, ContainerRuntime); 4] = [
    ("cri-containerd-", ContainerRuntime::Containerd),
    ("docker-", ContainerRuntime::Docker),
    ("crio-", ContainerRuntime::Crio),
    ("libpod-", ContainerRuntime::Podman),
];

pub fn parse(path: &str) -> CgroupInfo {
    // The kernel appends " (deleted)" once the cgroup has been removed, which
    // happens routinely for short-lived processes that are still being looked up.
    let path = path.trim_end();
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let mut info = CgroupInfo::default();
    let mut cur_slice: Option<&str> = None;
    // The slice enclosing whichever of unit/container is reported; without
    // either, the innermost slice seen is the best description left.
    let mut owner_slice: Option<Option<&str>> = None;
    let mut in_kubepods = false;
    let mut parent: Option<&str> = None;

    for comp in path.split('/').filter(|c| !c.is_empty()) {
        // containerd's systemd driver, when nested below another unit, writes
        // "<pod slice>:<runtime prefix>:<id>" as a single path component.
        let colon = colon_form(comp);
        let head = colon.map_or(comp, |(slice, _, _)| slice);

        if head.contains("kubepods") {
            in_kubepods = true;
        }
        // Once inside a container, pod slices belong to a nested orchestrator
        // (e.g. kind) that the host runtime cannot resolve, so ignore them.
        if info.container_id.is_none()
            && let Some(uid) = pod_uid(head, in_kubepods)
        {
            info.pod_uid = Some(uid);
        }

        let container = match colon {
            Some((_, prefix, id)) => Some((runtime_for_prefix(prefix), id.to_owned())),
            None => container_of(comp, parent),
        };

        if is_slice(head) {
            cur_slice = Some(head);
        }

        match container {
            // The outermost container wins: it is the one the host's runtime
            // knows about, which is what attribution can later resolve.
            Some((runtime, id)) if info.container_id.is_none() => {
                info.container_id = Some(id);
                info.container_runtime = runtime;
                owner_slice = Some(cur_slice);
                info.unit = None;
            }
            Some(_) => {}
            None if is_unit(comp) => {
                info.unit = Some(comp.to_owned());
                owner_slice = Some(cur_slice);
            }
            None => {}
        }
        parent = Some(comp);
    }

    info.slice = owner_slice.unwrap_or(cur_slice).map(str::to_owned);
    info
}

fn colon_form(comp: &str) -> Option<(&str, &str, &str)> {
    let mut parts = comp.splitn(3, ':');
    let (slice, prefix, id) = (parts.next()?, parts.next()?, parts.next()?);
    // Unit names may legitimately contain ':' (e.g. systemd-backlight@…), so
    // only treat it as the containerd form when the last part is an id.
    is_container_id(id).then_some((slice, prefix, id))
}

fn runtime_for_prefix(prefix: &str) -> Option<ContainerRuntime> {
    SCOPE_PREFIXES
        .iter()
        .find(|(p, _)| p.strip_suffix('-') == Some(prefix))
        .map(|(_, runtime)| *runtime)
}

fn container_of(comp: &str, parent: Option<&str>) -> Option<(Option<ContainerRuntime>, String)> {
    if let Some(name) = comp.strip_prefix("lxc.payload.")
        && !name.is_empty()
    {
        return Some((Some(ContainerRuntime::Lxc), name.to_owned()));
    }
    // cgroupfs-driver podman uses "libpod-<id>" without the ".scope" suffix.
    let stem = comp.strip_suffix(".scope").unwrap_or(comp);
    for (prefix, runtime) in SCOPE_PREFIXES {
        if let Some(id) = stem.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some((Some(runtime), id.to_owned()));
        }
    }
    if is_container_id(comp) {
        // A bare id only names its runtime through the parent directory; under
        // kubepods (cgroupfs driver) any CRI runtime could have created it.
        let runtime = match parent {
            Some("docker") => Some(ContainerRuntime::Docker),
            Some("libpod_parent") => Some(ContainerRuntime::Podman),
            _ => None,
        };
        return Some((runtime, comp.to_owned()));
    }
    None
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn is_slice(comp: &str) -> bool {
    comp.strip_suffix(".slice")
        .is_some_and(|stem| !stem.is_empty())
}

fn is_unit(comp: &str) -> bool {
    UNIT_SUFFIXES
        .iter()
        .any(|sfx| comp.strip_suffix(sfx).is_some_and(|stem| !stem.is_empty()))
}

fn pod_uid(comp: &str, in_kubepods: bool) -> Option<String> {
    let stem = comp.strip_suffix(".slice").unwrap_or(comp);
    let raw = if stem.contains("kubepods") {
        // Systemd driver: "[kubelet-]kubepods[-qos]-pod<uid with '_' for '-'>"
        // (kind nests it under kubelet.slice); the uid itself contains no '-',
        // so the last dash-separated field is it.
        stem.rsplit('-').next()?.strip_prefix("pod")?
    } else if in_kubepods {
        stem.strip_prefix("pod")?
    } else {
        return None;
    };
    let uid = raw.replace('_', "-").to_ascii_lowercase();
    is_pod_uid(&uid).then_some(uid)
}

/// Accepts the UUID form and the 32-hex form that static (mirror) pods get,
/// whose UID is a hash of the manifest rather than a UUID.
fn is_pod_uid(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() == 32 {
        return b.iter().all(u8::is_ascii_hexdigit);
    }
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4c01db0b339c2f9f5a2c9dc8bb4f0b1d4a6e7c8f9a0b1c2d3e4f5a6b7c8d9e0f";
    const ID2: &str = "a3f5c2e8b9d1047e6f2a8c3b5d7e9f1a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e";
    const UID: &str = "1a2b3c4d-5e6f-7a8b-9c0d-112233445566";
    /// Placeholders keep the 64-hex ids out of the tables so each case fits
    /// on one line; "<UID_>" is the underscore form the systemd driver uses.
    const SUBST: [(&str, &str); 4] = [
        ("<ID>", ID),
        ("<ID2>", ID2),
        ("<UID>", UID),
        ("<UID_>", "1a2b3c4d_5e6f_7a8b_9c0d_112233445566"),
    ];

    /// Renders the parse of a templated path as "runtime id pod unit slice",
    /// listing only the fields that are set.
    fn summary(template: &str) -> String {
        let path = SUBST
            .iter()
            .fold(template.to_owned(), |p, (k, v)| p.replace(k, v));
        let i = parse(&path);
        let fields = [
            i.container_runtime.map(|r| format!("{r:?}")),
            i.container_id.map(|c| format!("id={c}")),
            i.pod_uid.map(|p| format!("pod={p}")),
            i.unit.map(|u| format!("u={u}")),
            i.slice.map(|s| format!("s={s}")),
        ];
        let out = fields.into_iter().flatten().collect::<Vec<_>>().join(" ");
        SUBST.iter().fold(out, |o, (k, v)| o.replace(v, k))
    }

    /// Each case is "templated path => expected summary".
    fn check(cases: &[&str]) {
        for case in cases {
            let (path, want) = case.split_once(" => ").unwrap_or((case, ""));
            assert_eq!(summary(path), want, "{path}");
        }
    }

    #[test]
    fn system_service() {
        check(&["/system.slice/nginx.service => u=nginx.service s=system.slice"]);
    }

    #[test]
    fn docker_systemd_scope_is_not_the_unit() {
        check(&["/system.slice/docker-<ID>.scope => Docker id=<ID> s=system.slice"]);
    }

    #[test]
    fn docker_cgroupfs_and_nested() {
        check(&[
            "/docker/<ID> => Docker id=<ID>",
            "/docker/<ID>/sub => Docker id=<ID>",
        ]);
    }

    #[test]
    fn containerd_colon_form_hides_hosting_unit() {
        check(&[
            "/system.slice/containerd.service/kubepods-besteffort-pod<UID_>.slice:cri-containerd:<ID> \
             => Containerd id=<ID> pod=<UID> s=kubepods-besteffort-pod<UID_>.slice",
        ]);
    }

    #[test]
    fn containerd_systemd_driver() {
        check(&[
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID_>.slice/cri-containerd-<ID>.scope \
             => Containerd id=<ID> pod=<UID> s=kubepods-burstable-pod<UID_>.slice",
        ]);
    }

    #[test]
    fn kind_kubelet_slice_layout() {
        check(&[
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod<UID_>.slice/cri-containerd-<ID>.scope \
             => Containerd id=<ID> pod=<UID> s=kubelet-kubepods-pod<UID_>.slice",
        ]);
    }

    #[test]
    fn deleted_cgroup_suffix_and_newline() {
        check(&["/system.slice/docker-<ID>.scope (deleted)\n => Docker id=<ID> s=system.slice"]);
    }

    #[test]
    fn kubepods_cgroupfs_runtime_unknown() {
        check(&[
            "/kubepods/burstable/pod<UID>/<ID> => id=<ID> pod=<UID>",
            "/kubepods/pod<UID>/<ID> => id=<ID> pod=<UID>",
        ]);
    }

    #[test]
    fn static_pod_hash_uid() {
        check(&[
            "/kubepods.slice/kubepods-podabcdef0123456789abcdef0123456789.slice/crio-<ID>.scope \
             => Crio id=<ID> pod=abcdef0123456789abcdef0123456789 \
             s=kubepods-podabcdef0123456789abcdef0123456789.slice",
        ]);
    }

    #[test]
    fn crio_and_conmon() {
        check(&[
            "/kubepods.slice/kubepods-pod<UID_>.slice/crio-<ID>.scope \
             => Crio id=<ID> pod=<UID> s=kubepods-pod<UID_>.slice",
            "/kubepods.slice/kubepods-pod<UID_>.slice/crio-conmon-<ID>.scope \
             => pod=<UID> u=crio-conmon-<ID>.scope s=kubepods-pod<UID_>.slice",
        ]);
    }

    #[test]
    fn podman_variants() {
        check(&[
            "/machine.slice/libpod-<ID>.scope => Podman id=<ID> s=machine.slice",
            "/machine.slice/libpod-<ID>.scope/container => Podman id=<ID> s=machine.slice",
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-<ID>.scope \
             => Podman id=<ID> s=user.slice",
            "/libpod_parent/libpod-<ID> => Podman id=<ID>",
            "/machine.slice/libpod-conmon-<ID>.scope => u=libpod-conmon-<ID>.scope s=machine.slice",
        ]);
    }

    #[test]
    fn lxc_payload() {
        check(&[
            // A unit below the container is the service inside it, so it is kept.
            "/lxc.payload.web01/system.slice/nginx.service \
             => Lxc id=web01 u=nginx.service s=system.slice",
            "/lxc.payload.db => Lxc id=db",
            "/lxc.monitor.db",
            "/lxc.payload.",
        ]);
    }

    #[test]
    fn outermost_container_wins() {
        check(&[
            "/system.slice/docker-<ID>.scope/kubelet.slice/kubepods-pod<UID_>.slice/cri-containerd-<ID2>.scope \
             => Docker id=<ID> s=system.slice",
        ]);
    }

    #[test]
    fn login_session() {
        check(&[
            "/user.slice/user-1000.slice/session-3.scope => u=session-3.scope s=user-1000.slice",
        ]);
    }

    #[test]
    fn user_manager_innermost_unit() {
        check(&[
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/vte-spawn-xyz.scope \
             => u=vte-spawn-xyz.scope s=app-org.gnome.Terminal.slice",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.service \
             => u=app-foo.service s=app.slice",
            "/user.slice/user-1000.slice/user@1000.service => u=user@1000.service s=user-1000.slice",
        ]);
    }

    #[test]
    fn systemd_escapes_kept() {
        check(&[
            "/system.slice/system-systemd\\x2dfsck.slice/systemd-fsck@dev-disk-by\\x2duuid-12.service \
             => u=systemd-fsck@dev-disk-by\\x2duuid-12.service s=system-systemd\\x2dfsck.slice",
            "/system.slice/systemd-backlight@backlight:acpi_video0.service \
             => u=systemd-backlight@backlight:acpi_video0.service s=system.slice",
        ]);
    }

    #[test]
    fn root_empty_and_garbage_yield_none() {
        // Ids must be exactly 64 lowercase hex; pods need a kubepods ancestor.
        let upper = format!("/docker/{}", ID.to_uppercase());
        let short = format!("/docker/{}", &ID[1..]);
        let garbage =
            "/ // /foo/bar /docker/notanid /.service/.slice/.scope /docker/<ID>0 /pod<UID>/x";
        for p in garbage.split(' ').chain(["", &upper, &short]) {
            assert_eq!(summary(p), "", "{p}");
        }
        check(&["/kubepods.slice/kubepods-podnot_a_uid.slice => s=kubepods-podnot_a_uid.slice"]);
    }

    #[test]
    fn never_panics_on_odd_input() {
        let long = "/a.slice".repeat(10_000) + "/x.service";
        assert_eq!(parse(&long).unit.as_deref(), Some("x.service"));
        check(&["/ünïcödé.slice/日本語.service => u=日本語.service s=ünïcödé.slice"]);
        let odd = "/docker/é /system.slice/docker-é.scope /system.slice/docker-🦀🦀.scope \
                   /kubepods/podé/é /kubepods.slice/kubepods-podé.slice /lxc.payload.名前/x ::: \
                   /a:b:c/::é /\0/\u{FFFD} /.slice -.slice /kubepods- /kubepods-pod pod \
                   libpod-.scope crio-conmon-.scope .scope é.scope /\\x2d/\\x";
        let full = SUBST.iter().fold(
            "/kubepods.slice/kubepods-pod<UID_>.slice/cri-containerd-<ID>.scope".to_owned(),
            |p, (k, v)| p.replace(k, v),
        );
        for p in odd.split(' ').chain([full.as_str()]) {
            // Every char-boundary prefix, to catch slicing at odd offsets.
            for (cut, _) in p.char_indices().chain([(p.len(), ' ')]) {
                let _ = parse(&p[..cut]);
            }
        }
    }
}
