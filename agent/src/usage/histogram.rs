//! Latency histograms that merge: buckets 5% wide (so a percentile read
//! back is within 2.5% of the truth), stored sparse in the hourly rollups.

use std::collections::BTreeMap;

/// The lower edge of bucket 1, in ms; everything at or below is bucket 0.
const FLOOR_MS: f64 = 0.001;
const GROWTH: f64 = 1.05;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    buckets: BTreeMap<u16, u64>,
}

fn bucket(ms: f64) -> u16 {
    // NaN and anything at or below the floor.
    if ms.is_nan() || ms <= FLOOR_MS {
        return 0;
    }
    ((ms / FLOOR_MS).ln() / GROWTH.ln())
        .floor()
        .min(f64::from(u16::MAX - 1)) as u16
        + 1
}

/// The geometric middle of a bucket.
fn value(bucket: u16) -> f64 {
    if bucket == 0 {
        return FLOOR_MS;
    }
    FLOOR_MS * GROWTH.powf(f64::from(bucket) - 0.5)
}

impl Histogram {
    pub fn record(&mut self, ms: f64) {
        *self.buckets.entry(bucket(ms)).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (b, n) in &other.buckets {
            *self.buckets.entry(*b).or_default() += n;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Nearest-rank percentile, `q` in 0..=1.
    pub fn percentile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.values().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (b, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return Some(value(*b));
            }
        }
        None
    }

    /// (bucket u16, count u64) pairs, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buckets.len() * 10);
        for (b, n) in &self.buckets {
            out.extend_from_slice(&b.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// The inverse of `encode`; a damaged tail is ignored, not trusted.
    pub fn decode(bytes: &[u8]) -> Histogram {
        let mut h = Histogram::default();
        for pair in bytes.chunks_exact(10) {
            let b = u16::from_le_bytes([pair[0], pair[1]]);
            let n = u64::from_le_bytes(pair[2..10].try_into().expect("8 bytes"));
            *h.buckets.entry(b).or_default() += n;
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_the_bucket_width() {
        let mut h = Histogram::default();
        for ms in 1..=1000 {
            h.record(f64::from(ms));
        }
        for (q, truth) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = h.percentile(q).unwrap();
            assert!((got - truth).abs() / truth < 0.03, "p{q}: {got} vs {truth}");
        }
        assert_eq!(Histogram::default().percentile(0.5), None);
    }

    #[test]
    fn encodes_merges_and_survives_garbage() {
        let mut a = Histogram::default();
        a.record(0.0);
        a.record(12.5);
        let mut b = Histogram::decode(&a.encode());
        assert_eq!(a, b);
        b.merge(&a);
        assert_eq!(b.buckets.values().sum::<u64>(), 4);
        let mut damaged = a.encode();
        damaged.push(7);
        assert_eq!(Histogram::decode(&damaged), a);
        assert_eq!(bucket(f64::NAN), 0);
        assert!(bucket(1e300) < u16::MAX);
    }
}
