//! The demo's ownership timeline: drawn at its end from its members' JSON logs (`mN.log` in
//! its temp dir), so that the story just told can be looked at again, lease by lease.

use std::path::{Path, PathBuf};

use crate::timeline;

/// Where the page goes: as asked; else inside a kept temp dir; else beside the temp dir (which
/// is about to be removed), under the same name.
pub fn path(asked: Option<&Path>, dir: &Path, keep: bool) -> PathBuf {
    match asked {
        Some(p) => p.to_path_buf(),
        None if keep => dir.join("timeline.html"),
        None => dir.with_extension("html"),
    }
}

/// Writes the page from every member log in `dir`; one line saying where and what it found.
pub fn write(dir: &Path, out: &Path) -> Result<String, String> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_member_log(p))
        .collect();
    logs.sort();
    let tl = timeline::write(&logs, out, "Rebalanser demo: ownership timeline")
        .map_err(|e| format!("{e:#}"))?;
    let verdict = match tl.overlaps.len() {
        0 => "no overlap".to_string(),
        n => format!("{n} OVERLAP(S)"),
    };
    Ok(format!(
        "Ownership timeline: {} ({} leases of {} members, {verdict}).",
        out.display(),
        tl.intervals.len(),
        tl.members.len()
    ))
}

/// `m<digits>.log`: how the demo names its members' logs.
fn is_member_log(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix('m'))
        .and_then(|n| n.strip_suffix(".log"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_logs_and_paths() {
        assert!(is_member_log(Path::new("/t/m1.log")));
        assert!(is_member_log(Path::new("m12.log")));
        assert!(!is_member_log(Path::new("/t/work.log")));
        assert!(!is_member_log(Path::new("/t/m.log")));
        assert!(!is_member_log(Path::new("/t/m1.log.old")));
        let dir = Path::new("/tmp/rebalanser-demo-1-ab");
        assert_eq!(
            path(None, dir, false),
            Path::new("/tmp/rebalanser-demo-1-ab.html")
        );
        assert_eq!(
            path(None, dir, true),
            Path::new("/tmp/rebalanser-demo-1-ab/timeline.html")
        );
        assert_eq!(
            path(Some(Path::new("x.html")), dir, true),
            Path::new("x.html")
        );
    }
}
