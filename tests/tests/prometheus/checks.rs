//! The PromQL checks of `prometheus.rs`, collected rather than asserted one by one: every
//! query is evaluated and every disagreement reported together at the end, so one run (a
//! real Prometheus, a few seconds of scrapes) shows each label that is missing or wrong,
//! not only the first.

use std::collections::BTreeMap;

use skiff_e2e::prometheus::{Prometheus, Sample};

/// A label set from pairs. Prometheus drops labels whose value is empty, so a row written
/// without a label also stands for that label being empty.
pub(crate) fn label_set(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A wanted sample: its labels and a count.
pub(crate) fn row(pairs: &[(&str, &str)], count: usize) -> Sample {
    (label_set(pairs), count as f64)
}

/// Checks against one Prometheus, and what they found.
pub(crate) struct Checks<'a> {
    prometheus: &'a Prometheus,
    failed: Vec<String>,
    passed: Vec<String>,
}

impl<'a> Checks<'a> {
    pub(crate) fn new(prometheus: &'a Prometheus) -> Self {
        Self {
            prometheus,
            failed: Vec::new(),
            passed: Vec::new(),
        }
    }

    /// `promql` must return exactly the rows `want`, labels and values, in any order.
    pub(crate) async fn exactly(&mut self, what: &str, promql: &str, want: &[Sample]) {
        let mut want = want.to_vec();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        let expectation = format!("{want:?}");
        self.holds(what, promql, &expectation, |got| {
            let mut got = got.to_vec();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            got.len() == want.len()
                && got
                    .iter()
                    .zip(&want)
                    .all(|((gl, gv), (wl, wv))| gl == wl && gv == wv)
        })
        .await;
    }

    /// `promql`'s rows must satisfy `check`; `expectation` says what it wants, for the
    /// report. `check` sees only the rows that are not 0: a series made ready before its
    /// first use (the route-less row of a service with routes, say) counts nothing, and
    /// what Linkerd shows from a query reads the same with it or without it (`edges` skips
    /// such rows outright). The report shows every row.
    pub(crate) async fn holds(
        &mut self,
        what: &str,
        promql: &str,
        expectation: &str,
        check: impl FnOnce(&[Sample]) -> bool,
    ) {
        let got = self.prometheus.query(promql).await;
        let report =
            format!("{what}\n    query: {promql}\n    want:  {expectation}\n    got:   {got:?}");
        let counted: Vec<Sample> = got.into_iter().filter(|(_, v)| *v != 0.0).collect();
        if check(&counted) {
            self.passed.push(report);
        } else {
            self.failed.push(report);
        }
    }

    /// Prints every check, and fails the test if any disagreed.
    pub(crate) fn finish(self) {
        for report in &self.passed {
            println!("PASSED {report}");
        }
        for report in &self.failed {
            println!("FAILED {report}");
        }
        assert!(
            self.failed.is_empty(),
            "{} of {} PromQL checks failed:\n{}",
            self.failed.len(),
            self.failed.len() + self.passed.len(),
            self.failed.join("\n")
        );
    }
}
