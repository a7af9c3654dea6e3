//! Dumps the store could not be made to prove: a claimed dump whose upload
//! was sent but not proven `STUCK_AFTER` times in a row is moved aside, so
//! that the claim no longer holds back newer dumps, and kept there until a
//! later upload proves it (or a person removes it).

use super::{Claimed, DUMP_FILES, Staging, dump_id, remove_if_present};
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

/// Unproven uploads of one claim before it is moved aside.
pub const STUCK_AFTER: u32 = 3;
const STUCK: &str = ".stuck-";
const UNPROVEN: &str = ".unproven-";

impl Staging {
    /// Counts a failed proof of `claimed`. At the `STUCK_AFTER`th in a row
    /// the dump is moved aside as stuck: the new path is returned.
    pub fn unproven(&self, claimed: &Claimed) -> io::Result<Option<PathBuf>> {
        if claimed.stuck {
            return Ok(None);
        }
        let counter = self.unproven_counter(claimed.name);
        let count = std::fs::read_to_string(&counter)
            .ok()
            .and_then(|c| c.trim().parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        if count < STUCK_AFTER {
            // Whole or not at all: a counter cut short would read as 0.
            let next = self
                .dumps()
                .join(format!("{UNPROVEN}next-{}", claimed.name));
            let mut f = File::create(&next)?;
            write!(f, "{count}")?;
            f.sync_all()?;
            std::fs::rename(&next, &counter)?;
            File::open(self.dumps())?.sync_all()?;
            return Ok(None);
        }
        // Named by its finish, so that several can be stuck at once; the
        // rename keeps the time its folder is named by.
        let aside = self.dumps().join(format!(
            "{STUCK}{}-{}",
            dump_id(claimed.finished),
            claimed.name
        ));
        std::fs::rename(&claimed.path, &aside)?;
        remove_if_present(&counter)?;
        File::open(self.dumps())?.sync_all()?;
        Ok(Some(aside))
    }

    /// Forgets the failed proofs of dumps named `name`: sent, or a new dump.
    pub(super) fn forget_unproven(&self, name: &str) -> io::Result<()> {
        remove_if_present(&self.unproven_counter(name))
    }

    fn unproven_counter(&self, name: &str) -> PathBuf {
        self.dumps().join(format!("{UNPROVEN}{name}"))
    }

    /// The dumps moved aside as stuck, oldest first, as claims to try again.
    pub fn stuck(&self) -> io::Result<Vec<Claimed>> {
        let mut found = vec![];
        for entry in std::fs::read_dir(self.dumps())? {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = file.strip_prefix(STUCK) else {
                continue;
            };
            let Some(name) = DUMP_FILES.iter().find(|n| rest.ends_with(&format!("-{n}"))) else {
                continue;
            };
            found.push(Claimed {
                path: entry.path(),
                name,
                finished: entry.metadata()?.modified()?,
                left_over: false,
                stuck: true,
            });
        }
        found.sort_by_key(|c| c.finished);
        Ok(found)
    }
}
