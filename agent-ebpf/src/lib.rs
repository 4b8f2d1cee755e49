//! Empty on purpose: this target lets `agent`'s build script depend on the
//! crate so cargo reruns it when the kernel programs change. The programs
//! are the `modelgate-ebpf` binary, built for bpfel-unknown-none.
#![no_std]
