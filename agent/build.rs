//! Builds the kernel programs (agent-ebpf) for bpfel-unknown-none with the
//! nightly toolchain and leaves the object in OUT_DIR, where `ebpf::load`
//! embeds it. `cargo xtask build` installs what this needs first.
fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "agent-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).map_err(|err| {
        anyhow::anyhow!(
            "building the eBPF programs failed: {err:#}\n\
             hint: run `cargo xtask build` once; it installs the nightly rust-src \
             component and bpf-linker that this step needs"
        )
    })
}
