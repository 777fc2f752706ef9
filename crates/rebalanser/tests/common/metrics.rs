//! A recorder for the `metrics` facade that keeps every series in memory, to read what
//! members recorded. (`metrics-util`'s debugging recorder resets gauges on each snapshot,
//! and members set a gauge only when it changes.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

/// A series: its name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

#[derive(Default)]
pub struct TestRecorder {
    counters: Mutex<BTreeMap<Series, Arc<AtomicU64>>>,
    /// Bits of an `f64`, as the facade's `GaugeFn for AtomicU64` keeps them.
    gauges: Mutex<BTreeMap<Series, Arc<AtomicU64>>>,
    histograms: Mutex<BTreeMap<Series, Arc<Samples>>>,
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(value);
    }
}

fn series(key: &Key) -> Series {
    let mut labels: Vec<(String, String)> = key
        .labels()
        .map(|l| (l.key().to_string(), l.value().to_string()))
        .collect();
    labels.sort();
    (key.name().to_string(), labels)
}

fn entry<T: Default>(map: &Mutex<BTreeMap<Series, Arc<T>>>, key: &Key) -> Arc<T> {
    map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(series(key))
        .or_default()
        .clone()
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(entry(&self.counters, key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(entry(&self.gauges, key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(entry(&self.histograms, key))
    }
}

/// The process's recorder, installed on first use. Install it before members join: a member
/// takes its handles when it joins. Tests in one binary share it, so each reads only the
/// series of its own group.
pub fn recorder() -> &'static TestRecorder {
    static R: OnceLock<&'static TestRecorder> = OnceLock::new();
    R.get_or_init(|| {
        let r: &'static TestRecorder = Box::leak(Box::default());
        metrics::set_global_recorder(r).expect("no other recorder in this test binary");
        r
    })
}

/// Whether every `(label, value)` of `want` is among the series' labels.
fn matches(s: &Series, name: &str, want: &[(&str, &str)]) -> bool {
    s.0 == name
        && want
            .iter()
            .all(|(k, v)| s.1.iter().any(|(sk, sv)| sk == k && sv == v))
}

impl TestRecorder {
    /// The sum of the counters `name` whose labels include `want`.
    pub fn counter(&self, name: &str, want: &[(&str, &str)]) -> u64 {
        let m = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .filter(|(s, _)| matches(s, name, want))
            .map(|(_, c)| c.load(Ordering::Acquire))
            .sum()
    }

    /// The gauge `name` whose labels include `want`, if there is exactly one.
    pub fn gauge(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let m = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = m.iter().filter(|(s, _)| matches(s, name, want));
        let (_, g) = found.next()?;
        if found.next().is_some() {
            return None;
        }
        Some(f64::from_bits(g.load(Ordering::Acquire)))
    }

    /// Every sample of the histograms `name` whose labels include `want`.
    pub fn samples(&self, name: &str, want: &[(&str, &str)]) -> Vec<f64> {
        let m = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .filter(|(s, _)| matches(s, name, want))
            .flat_map(|(_, h)| h.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }
}
