//! The text a `bpe:N` vocabulary is trained on: a seeded sample of the training documents within
//! a byte budget, so that a small vocabulary for a large corpus never needs the corpus (or the
//! trainer's tables for all of it) in memory.
//!
//! Each training document gets a priority, a hash of ([`SAMPLE_SEED`], its index); the documents
//! of smallest priority whose texts fit the budget are kept, and handed to the trainer in corpus
//! order. The sample depends only on the corpus and the budget, not on threads or timing. When
//! every training document fits, the sample is the whole training split.

use std::collections::{BTreeMap, BinaryHeap};

/// The seed of the sample's priorities.
pub const SAMPLE_SEED: u64 = 1337;

/// A bounded sample of documents.
#[derive(Debug)]
pub struct BpeSample {
    budget: usize,
    bytes: usize,
    /// Largest priority on top, to evict first.
    heap: BinaryHeap<(u64, u64)>,
    texts: BTreeMap<u64, String>,
}

/// SplitMix64: a well-mixed 64-bit hash.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl BpeSample {
    /// An empty sample of at most `budget` bytes of text.
    pub fn new(budget: usize) -> Self {
        BpeSample {
            budget,
            bytes: 0,
            heap: BinaryHeap::new(),
            texts: BTreeMap::new(),
        }
    }

    /// Offers training document `index`; a text longer than the whole budget is offered as its
    /// first `budget` bytes (cut at a character boundary).
    pub fn offer(&mut self, index: u64, text: &str) {
        let mut end = text.len().min(self.budget);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text = &text[..end];
        let priority = mix(SAMPLE_SEED ^ mix(index));
        if self.bytes + text.len() > self.budget {
            if let Some(&(top, _)) = self.heap.peek() {
                if priority > top {
                    return; // would be evicted at once
                }
            }
        }
        self.heap.push((priority, index));
        self.bytes += text.len();
        self.texts.insert(index, text.to_string());
        while self.bytes > self.budget {
            let Some((_, evicted)) = self.heap.pop() else {
                break;
            };
            if let Some(t) = self.texts.remove(&evicted) {
                self.bytes -= t.len();
            }
        }
    }

    /// Takes document `index` out of the sample (it turned out to be a validation document).
    pub fn withdraw(&mut self, index: u64) {
        if let Some(t) = self.texts.remove(&index) {
            self.bytes -= t.len();
            self.heap.retain(|&(_, i)| i != index);
        }
    }

    /// Replaces the whole sample with one text (the head of a corpus that is one document).
    pub fn replace_with(&mut self, text: &str) {
        self.heap.clear();
        self.texts.clear();
        self.bytes = 0;
        self.offer(0, text);
    }

    /// Bytes of text held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The sampled texts, in corpus order.
    pub fn into_texts(self) -> Vec<String> {
        self.texts.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_fits_then_a_bounded_seeded_subset() {
        let mut all = BpeSample::new(1000);
        for i in 0..10 {
            all.offer(i, &format!("doc {i} "));
        }
        assert_eq!(
            all.into_texts().len(),
            10,
            "all fit: the whole split, in order"
        );
        let take = |order: &[u64]| {
            let mut s = BpeSample::new(50);
            for &i in order {
                s.offer(i, &"x".repeat(10 + i as usize % 3));
            }
            assert!(s.bytes() <= 50);
            s.texts.keys().copied().collect::<Vec<_>>()
        };
        let forward: Vec<u64> = (0..100).collect();
        let backward: Vec<u64> = (0..100).rev().collect();
        let kept = take(&forward);
        assert!(kept.len() >= 3 && kept.len() <= 5, "{kept:?}");
        assert_eq!(
            kept,
            take(&backward),
            "the sample does not depend on arrival order"
        );
        let mut s = BpeSample::new(5);
        s.offer(0, "héllo world");
        assert_eq!(s.into_texts(), ["héll"], "cut at a character boundary");
    }
}
