//! The daemon and the CLI on the real kernel: limits through the API, kept
//! through kill -9, adopted on restart, removed by detach; confinement; pod
//! UIDs; mutual TLS; metrics; custom programs.

mod adoption;
mod api;
mod limits;
mod pods;
mod serving;
mod upgrades;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
