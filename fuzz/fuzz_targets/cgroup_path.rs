//! The cgroup path → systemd unit / container / pod parser. Paths come from
//! /proc/PID/cgroup, and container runtimes name cgroups after what a
//! tenant chose.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::identity::cgroup_path::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let info = parse(path);
    // Whatever is reported must come from the path (pod uids are
    // normalised: lowercase, '_' from the systemd driver back to '-').
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let haystack = norm(path);
    for field in [&info.unit, &info.slice, &info.container_id, &info.pod_uid]
        .into_iter()
        .flatten()
    {
        assert!(
            haystack.contains(&norm(field)),
            "{field:?} is not in {path:?}"
        );
    }
});
