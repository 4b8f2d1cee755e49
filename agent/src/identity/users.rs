//! uid → user name, cached: /etc/passwd (or NSS) is not read per event.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Users {
    names: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl Users {
    pub fn name(&mut self, uid: u32) -> Option<String> {
        self.names
            .entry(uid)
            .or_insert_with(|| {
                uzers::get_user_by_uid(uid).map(|u| u.name().to_string_lossy().into_owned())
            })
            .clone()
    }

    pub fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                uzers::get_group_by_gid(gid).map(|g| g.name().to_string_lossy().into_owned())
            })
            .clone()
    }

    /// Accounts can be added or renamed; forget what we cached.
    pub fn clear(&mut self) {
        self.names.clear();
        self.groups.clear();
    }
}
