//! Reads a Prometheus text exposition back into samples, so the JSON summary of
//! `GET /api/v1/metrics` shows exactly the numbers `GET /metrics` serves.

use std::collections::BTreeSet;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Holds every `(key, value)` of `filter`.
    fn matches(&self, filter: &[(&str, &str)]) -> bool {
        filter.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
}

/// A histogram's series for one label set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramData {
    pub count: f64,
    pub sum: f64,
    /// `(le, cumulative count)`, ascending, `+Inf` last.
    pub buckets: Vec<(f64, f64)>,
}

impl HistogramData {
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }

    /// The `q` quantile estimated as PromQL's `histogram_quantile` does: linear
    /// interpolation inside the bucket that holds it (the highest finite bound when it
    /// falls in `+Inf`).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = cumulative - lower.1;
                if in_bucket <= 0.0 {
                    return Some(le);
                }
                return Some(lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket);
            }
            lower = (le, cumulative);
        }
        Some(lower.0)
    }
}

impl Exposition {
    /// Parses the text format; comment and malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Self { samples }
    }

    /// Samples of `name` holding every label of `filter`.
    pub fn series<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.matches(filter))
    }

    /// The sum over [`Exposition::series`] (0 when there is none).
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.series(name, filter).map(|s| s.value).sum()
    }

    /// The first sample of `name` holding `filter`.
    pub fn value(&self, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
        self.series(name, filter).next().map(|s| s.value)
    }

    /// The values of `label` across the samples of `name`, sorted.
    pub fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.series(name, &[])
            .filter_map(|s| s.label(label).map(str::to_string))
            .collect()
    }

    /// Histogram `name` summed over the series that hold `filter` (buckets with the same
    /// bound added up), or `None` when it has no series.
    pub fn histogram(&self, name: &str, filter: &[(&str, &str)]) -> Option<HistogramData> {
        let count_name = format!("{name}_count");
        let mut h = HistogramData {
            count: self.sum(&count_name, filter),
            sum: self.sum(&format!("{name}_sum"), filter),
            buckets: Vec::new(),
        };
        self.series(&count_name, filter).next()?;
        for s in self.series(&format!("{name}_bucket"), filter) {
            let Some(le) = s.label("le").and_then(parse_value) else {
                continue;
            };
            match h.buckets.iter_mut().find(|(b, _)| *b == le) {
                Some(b) => b.1 += s.value,
                None => h.buckets.push((le, s.value)),
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(h)
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let split = line.find(['{', ' '])?;
    let name = &line[..split];
    let mut rest = &line[split..];
    let mut labels = Vec::new();
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            body = body.trim_start_matches([',', ' ']);
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = body.find('=')?;
            let key = body[..eq].trim().to_string();
            let quoted = body[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut escaped = false;
            let mut close = None;
            for (i, c) in quoted.char_indices() {
                if escaped {
                    value.push(if c == 'n' { '\n' } else { c });
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    close = Some(i);
                    break;
                } else {
                    value.push(c);
                }
            }
            labels.push((key, value));
            body = &quoted[close? + 1..];
        }
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x_total help\n# TYPE x_total counter\n\
        x_total{route=\"/a/{id}\",status=\"200\"} 3\n\
        x_total{route=\"/b\",status=\"500\"} 1\n\
        info{v=\"a \\\"q\\\" b\\\\c\"} 1\n\
        h_bucket{m=\"a\",le=\"0.1\"} 1\nh_bucket{m=\"a\",le=\"1\"} 3\nh_bucket{m=\"a\",le=\"+Inf\"} 4\n\
        h_sum{m=\"a\"} 2.5\nh_count{m=\"a\"} 4\nplain 7\n";

    #[test]
    fn samples_labels_and_escapes() {
        let e = Exposition::parse(TEXT);
        assert_eq!(e.sum("x_total", &[]), 4.0);
        assert_eq!(e.value("x_total", &[("route", "/a/{id}")]), Some(3.0));
        assert_eq!(e.value("plain", &[]), Some(7.0));
        assert_eq!(
            e.series("info", &[]).next().unwrap().label("v"),
            Some("a \"q\" b\\c")
        );
        assert_eq!(e.label_values("x_total", "status").len(), 2);
    }

    #[test]
    fn histograms_and_quantiles() {
        let e = Exposition::parse(TEXT);
        let h = e.histogram("h", &[("m", "a")]).unwrap();
        assert_eq!((h.count, h.sum), (4.0, 2.5));
        assert_eq!(h.buckets.len(), 3);
        assert_eq!(h.mean(), Some(0.625));
        // rank 2 of 4 lies halfway through the (0.1, 1] bucket holding ranks 2 and 3.
        assert!((h.quantile(0.5).unwrap() - 0.55).abs() < 1e-9);
        // In +Inf: the highest finite bound.
        assert_eq!(h.quantile(1.0), Some(1.0));
        assert!(e.histogram("missing", &[]).is_none());
    }
}
