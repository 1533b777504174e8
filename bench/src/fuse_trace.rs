//! Counting a FUSE mount's requests by opcode with the kernel tracepoint
//! `fuse:fuse_request_send`, in a tracefs instance of its own: the measure of how many round
//! trips to the daemon a pass over a mount costs (`shoal-bench warm-read`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A tracefs instance of its own (so nothing else's tracing is touched) recording
/// `fuse:fuse_request_send` for one FUSE connection. Removed on drop.
pub struct FuseTrace {
    dir: PathBuf,
}

const TRACEFS: &str = "/sys/kernel/tracing";
const SEND_EVENT: &str = "events/fuse/fuse_request_send";

impl FuseTrace {
    pub fn start(mp: &Path) -> Result<FuseTrace> {
        use std::os::unix::fs::MetadataExt;
        let root = Path::new(TRACEFS);
        if !root.join(SEND_EVENT).is_dir() {
            bail!(
                "no {TRACEFS}/{SEND_EVENT} (tracefs not mounted, or a kernel older than 6.15): \
                 `mount -t tracefs nodev {TRACEFS}` if the kernel has it"
            );
        }
        let dir = root
            .join("instances")
            .join(format!("shoal-bench-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir(&dir).ok();
        }
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let trace = FuseTrace { dir };
        // Room for a pass's worth of events; a full buffer is detected in `finish`.
        trace.write("buffer_size_kb", "16384")?;
        // The event's `connection` is the kernel's dev_t of the mount (MKDEV: 20 minor bits).
        let dev = std::fs::metadata(mp)?.dev();
        let kdev = (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev));
        trace.write(
            &format!("{SEND_EVENT}/filter"),
            &format!("connection == {kdev}"),
        )?;
        trace.write(&format!("{SEND_EVENT}/enable"), "1")?;
        Ok(trace)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .with_context(|| format!("writing {value} to {}", path.display()))
    }

    /// Stops recording; the counts by opcode name.
    pub fn finish(self) -> Result<BTreeMap<String, u64>> {
        self.write(&format!("{SEND_EVENT}/enable"), "0")?;
        let text = std::fs::read_to_string(self.dir.join("trace"))?;
        parse_trace(&text)
    }
}

impl Drop for FuseTrace {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join(SEND_EVENT).join("enable"), "0");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Counts `opcode N (NAME)` of each event line; fails when the buffer overflowed (the
/// header's entries-in-buffer ≠ entries-written).
fn parse_trace(text: &str) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# entries-in-buffer/entries-written: ") {
            let mut nums = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty());
            if let (Some(kept), Some(written)) = (nums.next(), nums.next()) {
                if kept != written {
                    bail!("the trace buffer overflowed: {kept} of {written} events kept");
                }
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((_, after)) = line.split_once(" opcode ") else {
            continue;
        };
        let name = after
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .map_or("?", |(n, _)| n);
        *counts
            .entry(name.trim_start_matches("FUSE_").to_owned())
            .or_insert(0) += 1;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_are_counted_by_opcode() {
        let text = "\
# tracer: nop
#
# entries-in-buffer/entries-written: 3/3   #P:2
#
      tar-1234    [001] .....   10.000001: fuse_request_send: connection 77 req 10 opcode 14 (FUSE_OPEN) len 48
      tar-1234    [001] .....   10.000002: fuse_request_send: connection 77 req 12 opcode 25 (FUSE_FLUSH) len 64
      tar-1234    [000] .....   10.000003: fuse_request_send: connection 77 req 14 opcode 14 (FUSE_OPEN) len 48
";
        let counts = parse_trace(text).expect("a complete trace");
        assert_eq!(counts.get("OPEN"), Some(&2));
        assert_eq!(counts.get("FLUSH"), Some(&1));
        assert_eq!(counts.len(), 2);
    }

    #[test]
    fn an_overflowed_trace_is_an_error() {
        let text = "# entries-in-buffer/entries-written: 10/12   #P:2\n";
        assert!(parse_trace(text).is_err());
    }
}
