//! The policy loader: the endpoint catalog and policy files (YAML) from
//! /etc/modelgate/policies, parsed, checked and compiled to the kernel's
//! form. A mistake must come back as an error naming file, line and field,
//! never as a panic that takes enforcement down on reload.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use modelgate::{
    catalog::Catalog,
    ebpf::endpoints,
    policy::{
        Policy,
        compile::{Compiled, Ids},
    },
};

/// Policies are checked against the shipped catalog.
fn shipped_catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        Catalog::parse(
            "endpoints.yaml",
            include_str!("../../policies/endpoints.yaml"),
        )
        .expect("the shipped catalog parses")
    })
}

fuzz_target!(|data: &[u8]| {
    // Byte 0: even, the rest is a policy file; odd, a catalog file.
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if which % 2 == 1 {
        match Catalog::parse("endpoints.yaml", text) {
            Ok(catalog) => {
                let mut ids = Ids::default();
                let _ = endpoints::dns_names(&catalog, &mut ids);
                let _ = Policy::parse("policy.yaml", "rules: []\n", &catalog);
            }
            Err(errors) => assert!(!errors.to_string().is_empty(), "an empty error"),
        }
        return;
    }
    let catalog = shipped_catalog();
    match Policy::parse("policy.yaml", text, catalog) {
        Ok(policy) => {
            if let Ok(compiled) = Compiled::new(policy, catalog, &mut Ids::default()) {
                let _ = compiled.global_entry();
            }
        }
        Err(errors) => assert!(!errors.to_string().is_empty(), "an empty error"),
    }
});
