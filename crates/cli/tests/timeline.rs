//! `rebalanser timeline` end to end: three real `member run` processes on a SQLite store go
//! through a join, a crash (SIGKILL) and a graceful leave; their JSON logs become one page, and
//! the page is opened in real headless Chromium: it must render without a script error (the
//! page marks `<html data-timeline="ready">` when its script ran; `window.onerror` marks
//! `data-js-error`), and its screenshot must show the lanes in the owners' colours.
//!
//! Chromium is required (`/usr/bin/chromium`, or `$CHROMIUM`); `scripts/install-test-deps`
//! installs it. Without it the test fails and says so. A second test draws a crafted pair of
//! logs with a deliberate overlap: listed, and red on the screenshot.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{create_group, spawn_member, temp_dir, tie_to_test, MemberProc, MemberSpec, BIN};
use rebalanser::Admin;

const TTL: Duration = Duration::from_millis(1000);
const GROUP: &str = "g";
/// A resource id the page must escape.
const NASTY: &str = r#"q<&"'>"#;
/// The fill of an overlap on the lanes (and of its key in the legend).
const OVERLAP_RED: [u8; 3] = [0xff, 0, 0];

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "this test opens the timeline in headless Chromium, which is not installed at {} \
         (install it: scripts/install-test-deps, or apt-get install -y chromium; or point \
         $CHROMIUM at it)",
        path.display()
    );
    path
}

/// Headless Chromium on `page` with `args`, in a profile of its own, bounded in time.
fn run_chromium(chromium: &Path, profile: &Path, args: &[String], page: &Path) -> Result<Output> {
    let out = Command::new("timeout")
        .arg("120")
        .arg(chromium)
        .args([
            "--headless",
            // CI runs as root, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--force-color-profile=srgb",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(page)
        .output()
        .context("running chromium")?;
    ensure!(
        out.status.success(),
        "chromium {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Waits until exactly `members` are registered, every resource is claimed by the member it is
/// assigned to, nobody drains, and there is a coordinator.
async fn settle(admin: &Admin, members: &[&str]) -> Result<()> {
    let want: BTreeSet<&str> = members.iter().copied().collect();
    let end = std::time::Instant::now() + TTL * 10 + Duration::from_secs(10);
    loop {
        let s = admin.status().await?;
        let names: BTreeSet<&str> = s.members.iter().map(|m| m.name.as_str()).collect();
        let held = s.resources.iter().all(|r| {
            r.claim
                .as_ref()
                .is_some_and(|c| want.contains(c.member.as_str()))
        });
        if names == want
            && held
            && s.pending_handovers.is_empty()
            && s.coordinator.is_some()
            && s.members.iter().all(|m| !m.draining)
        {
            return Ok(());
        }
        if std::time::Instant::now() > end {
            bail!("the group did not settle on {members:?}: {s:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn member(dir: &Path, store: &str, name: &str) -> Result<MemberProc> {
    let spec = MemberSpec::new(dir, store, GROUP, name, TTL);
    spawn_member(&spec, &["--", "sleep", "1000"], tie_to_test)
}

/// The attributes of the `<html>` start tag of a serialized DOM.
fn html_tag(dom: &str) -> Result<&str> {
    let start = dom.find("<html").context("no <html> in the DOM")?;
    let end = dom[start..].find('>').context("unterminated <html>")?;
    Ok(&dom[start..start + end])
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    tag[i..].split('"').next()
}

/// Every `data-colour="#rrggbb"` of the page's legend.
fn legend_colours(html: &str) -> Vec<[u8; 3]> {
    html.split("data-colour=\"#")
        .skip(1)
        .filter_map(|s| {
            let hex = s.get(..6)?;
            let v = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
            Some([v(0)?, v(2)?, v(4)?])
        })
        .collect()
}

/// Pixels of the screenshot within a small distance of each colour.
fn count_colours(png_path: &Path, colours: &[[u8; 3]]) -> Result<Vec<usize>> {
    let mut decoder = png::Decoder::new(fs::File::open(png_path)?);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => bail!("unexpected PNG colour type {other:?}"),
    };
    ensure!(
        info.width >= 1000 && info.height >= 500,
        "screenshot is {}x{}",
        info.width,
        info.height
    );
    let mut counts = vec![0; colours.len()];
    for px in buf[..info.buffer_size()].chunks_exact(step) {
        for (k, c) in colours.iter().enumerate() {
            if (0..3).all(|i| px[i].abs_diff(c[i]) <= 4) {
                counts[k] += 1;
            }
        }
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_of_a_join_a_crash_and_a_leave_renders_in_chromium() -> Result<()> {
    let chromium = chromium();
    let dir = temp_dir("rb-timeline", "e2e")?;
    let store = format!("sqlite://{}", dir.join("g.db").display());
    let resources = ["r1", "r2", "r3", "r4", "r5", NASTY];
    create_group(&store, GROUP, &resources).await?;
    let admin = Admin::connect(&store, GROUP)?;

    let mut m1 = member(&dir, &store, "m1")?;
    let mut m2 = member(&dir, &store, "m2")?;
    settle(&admin, &["m1", "m2"]).await?;
    // A join.
    let mut m3 = member(&dir, &store, "m3")?;
    settle(&admin, &["m1", "m2", "m3"]).await?;
    // A crash: its resources wait for its session to expire.
    m1.signal(libc::SIGKILL);
    m1.wait_exit(Duration::from_secs(5))?;
    settle(&admin, &["m2", "m3"]).await?;
    // A graceful leave.
    m2.signal(libc::SIGTERM);
    let st = m2.wait_exit(TTL * 5)?;
    ensure!(st.success(), "m2 left with {st}");
    settle(&admin, &["m3"]).await?;
    m3.signal(libc::SIGTERM);
    let st = m3.wait_exit(TTL * 5)?;
    ensure!(st.success(), "m3 left with {st}");

    // A file that is not a log at all: its lines are skipped and counted.
    let notes = dir.join("notes.txt");
    fs::write(&notes, "not json\n{\"also\": \"no timestamp\"}\n")?;
    let page = dir.join("timeline.html");
    let logs: Vec<PathBuf> = ["m1", "m2", "m3"]
        .iter()
        .map(|m| dir.join(format!("{m}.log")))
        .collect();
    let out = Command::new(BIN)
        .arg("timeline")
        .arg("--from")
        .args(&logs)
        .arg(&notes)
        .arg("-o")
        .arg(&page)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "timeline failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "3 member(s), 6 resource(s)",
        "0 overlap(s), 1 crash(es); 2 line(s) not JSON skipped",
    ] {
        ensure!(stdout.contains(want), "no {want:?} in: {stdout}");
    }
    let html = fs::read_to_string(&page)?;
    ensure!(
        !html.contains(NASTY),
        "the resource id {NASTY} is not escaped"
    );
    ensure!(
        html.contains("q&lt;&amp;&quot;&#39;&gt;"),
        "no escaped {NASTY}"
    );
    ensure!(html.contains("m1 crashed"), "no crash of m1 on the page");
    ensure!(
        html.contains("data-overlaps=\"0\""),
        "the page reports an overlap"
    );

    // An unreadable log is an error naming it.
    let missing = dir.join("missing.log");
    let out = Command::new(BIN)
        .arg("timeline")
        .arg("--from")
        .arg(&missing)
        .arg("-o")
        .arg(dir.join("x.html"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains(&*missing.to_string_lossy()),
        "{}: {stderr}",
        out.status
    );

    // The page in a real browser: its script ran, without an error.
    let profile = dir.join("chromium-profile");
    let dom = run_chromium(&chromium, &profile, &["--dump-dom".to_string()], &page)?;
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let tag = html_tag(&dom)?;
    ensure!(
        attr(tag, "data-js-error").is_none(),
        "script error on the page: {tag}"
    );
    ensure!(
        attr(tag, "data-timeline") == Some("ready"),
        "the page's script did not finish: {tag}"
    );
    let bars: usize = attr(tag, "data-bars")
        .and_then(|n| n.parse().ok())
        .context("no data-bars")?;
    ensure!(bars >= 8, "only {bars} lease bars rendered");

    // Its screenshot shows the lanes in the owners' colours.
    let shot = dir.join("timeline.png");
    run_chromium(
        &chromium,
        &profile,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1440,1000".to_string(),
        ],
        &page,
    )?;
    let colours = legend_colours(&html);
    ensure!(colours.len() == 3, "legend colours: {colours:?}");
    let counts = count_colours(&shot, &colours)?;
    // Red only in the legend's key: there was no overlap to draw.
    let red = count_colours(&shot, &[OVERLAP_RED])?[0];
    ensure!(
        red < 600,
        "{red} overlap-red pixels on a page without overlap"
    );
    println!(
        "screenshot {}: owner colour pixels {counts:?}",
        shot.display()
    );
    // m1's bars are short (it crashed early) but every owner held several resources for a while.
    let shown = counts.iter().filter(|&&n| n >= 300).count();
    ensure!(
        shown == 3,
        "the screenshot {} shows too few owner colours: {counts:?} pixels of {colours:?}",
        shot.display()
    );
    if std::env::var_os("KEEP_TIMELINE").is_none() {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// One JSON log line of member `m` (in the library's span) at `s` seconds past 18:00:00.
fn log_line(s: f64, m: &str, message: &str, fields: serde_json::Value) -> String {
    let mut f = fields;
    f["message"] = message.into();
    serde_json::json!({
        "timestamp": format!("2026-12-05T18:00:{s:09.6}Z"),
        "level": "INFO",
        "fields": f,
        "target": "rebalanser::driver",
        "span": {"group": GROUP, "member": m, "name": "member"},
    })
    .to_string()
}

/// A crafted pair of logs where b is granted r1 a second before a releases it: the page must
/// list the overlap and paint it red where Chromium shows it.
#[test]
fn a_deliberate_overlap_is_listed_and_red_in_chromium() -> Result<()> {
    use serde_json::json;
    let chromium = chromium();
    let dir = temp_dir("rb-timeline", "overlap")?;
    let grant = |s, m, r: &str, t: &str| {
        log_line(
            s,
            m,
            "lease granted",
            json!({"resource": r, "token": t, "epoch": 1}),
        )
    };
    let revoke = |s, m, r: &str| {
        log_line(
            s,
            m,
            "lease revoked",
            json!({"resource": r, "reason": "reassigned"}),
        )
    };
    let release = |s, m, r: &str, t: &str| {
        log_line(s, m, "lease released", json!({"resource": r, "token": t}))
    };
    let a = [
        log_line(0.0, "a", "member starting", json!({})),
        grant(0.5, "a", "r1", "5"),
        grant(0.5, "a", "r2", "5"),
        revoke(2.0, "a", "r2"),
        release(2.2, "a", "r2", "5"),
        revoke(3.0, "a", "r1"),
        release(4.0, "a", "r1", "5"),
        log_line(6.0, "a", "member stopped", json!({})),
    ];
    let b = [
        log_line(1.0, "b", "member starting", json!({})),
        grant(2.3, "b", "r2", "9"),
        grant(3.0, "b", "r1", "9"),
        release(5.5, "b", "r1", "9"),
        release(5.5, "b", "r2", "9"),
        log_line(6.0, "b", "member stopped", json!({})),
    ];
    let (la, lb) = (dir.join("a.log"), dir.join("b.log"));
    fs::write(&la, a.join("\n"))?;
    fs::write(&lb, b.join("\n"))?;
    let page = dir.join("overlap.html");
    let out = Command::new(BIN)
        .arg("timeline")
        .arg("--from")
        .args([&la, &lb])
        .arg("-o")
        .arg(&page)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "{stdout}");
    ensure!(stdout.contains("1 overlap(s)"), "{stdout}");
    ensure!(
        stdout.contains("OVERLAP: r1 held by a and b at once for 1.000 s"),
        "{stdout}"
    );
    let html = fs::read_to_string(&page)?;
    ensure!(html.contains("data-overlaps=\"1\""), "no overlap listed");

    let shot = dir.join("overlap.png");
    run_chromium(
        &chromium,
        &dir.join("chromium-profile"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1440,900".to_string(),
        ],
        &page,
    )?;
    let red = count_colours(&shot, &[OVERLAP_RED])?[0];
    println!("screenshot {}: {red} overlap-red pixels", shot.display());
    // 1 s of a 6 s timeline on a lane ~1170 px wide: ~190 x 18 px, beside the legend's key.
    ensure!(
        red > 1500,
        "only {red} overlap-red pixels in {}",
        shot.display()
    );
    if std::env::var_os("KEEP_TIMELINE").is_none() {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}
