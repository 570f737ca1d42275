use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{DataError, TokenFile};

/// Inputs and next-token targets, both int64 `[batch, block]`.
#[derive(Debug)]
pub struct Batch {
    /// Token ids fed to the model.
    pub x: Tensor,
    /// The same windows shifted by one token: what the model must predict.
    pub y: Tensor,
}

fn gather(
    file: &TokenFile,
    starts: &[u64],
    block: usize,
    device: Device,
) -> Result<Batch, DataError> {
    let mut x = host_ids(starts.len(), block)?;
    let mut y = host_ids(starts.len(), block)?;
    let mut window = Vec::with_capacity(block + 1);
    for &s in starts {
        window.clear();
        file.read_i64(s, block + 1, &mut window)?;
        x.extend_from_slice(&window[..block]);
        y.extend_from_slice(&window[1..]);
    }
    let shape = [starts.len() as i64, block as i64];
    Ok(Batch {
        x: to_device(Tensor::from_slice(&x).reshape(shape), device)?,
        y: to_device(Tensor::from_slice(&y).reshape(shape), device)?,
    })
}

/// An empty buffer for a batch's `windows × block` int64 ids, or a clear error where host memory
/// cannot hold it (instead of the process aborting on a failed allocation).
fn host_ids(windows: usize, block: usize) -> Result<Vec<i64>, DataError> {
    let too_large = || DataError::BatchTooLarge {
        windows,
        block,
        // Inputs and targets, 8 bytes an id.
        bytes: (windows as u128)
            .saturating_mul(block as u128)
            .saturating_mul(16),
    };
    let count = windows.checked_mul(block).ok_or_else(too_large)?;
    let mut ids = Vec::new();
    ids.try_reserve_exact(count).map_err(|_| too_large())?;
    Ok(ids)
}

/// `t` (int64, on the host) on `device`. To CUDA it goes through pinned memory with an
/// asynchronous copy, so the host does not wait for the copy and the copy overlaps the work
/// already queued (libtorch's caching host allocator keeps the pinned block until the copy is
/// done). On the CPU it is `t` itself.
fn to_device(t: Tensor, device: Device) -> Result<Tensor, DataError> {
    if device.is_cuda() {
        let pinned = lawa_ops::pin_memory(&t).map_err(|e| DataError::Pin(e.to_string()))?;
        Ok(pinned.to_device_(device, Kind::Int64, true, false))
    } else {
        Ok(t.to(device))
    }
}

/// Where a [`BatchSampler`] is in its random stream: enough to resume it exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// The seed the stream started from.
    pub seed: u64,
    /// How far the stream has advanced (ChaCha word position).
    pub word_pos: u128,
}

/// Random training windows from a token file: each batch draws `batch_size` start positions
/// uniformly from a seeded ChaCha8 stream, as nanoGPT's `get_batch` does with `torch.randint`.
/// The same seed gives the same batches on every machine, and [`SamplerState`] resumes mid-stream.
#[derive(Debug)]
pub struct BatchSampler {
    file: Arc<TokenFile>,
    batch_size: usize,
    block_size: usize,
    seed: u64,
    rng: ChaCha8Rng,
}

impl BatchSampler {
    /// A sampler of `batch_size` windows of `block_size` tokens, seeded with `seed`.
    pub fn new(
        file: Arc<TokenFile>,
        batch_size: usize,
        block_size: usize,
        seed: u64,
    ) -> Result<Self, DataError> {
        if batch_size == 0 {
            return Err(DataError::Zero { name: "batch_size" });
        }
        file.check_block(block_size)?;
        Ok(BatchSampler {
            file,
            batch_size,
            block_size,
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// The start positions of the next batch (advances the stream).
    pub fn next_starts(&mut self) -> Vec<u64> {
        let last_start = self.file.len() - self.block_size as u64 - 1;
        (0..self.batch_size)
            .map(|_| self.rng.gen_range(0..=last_start))
            .collect()
    }

    /// The next batch, on `device`.
    pub fn next_batch(&mut self, device: Device) -> Result<Batch, DataError> {
        let starts = self.next_starts();
        gather(&self.file, &starts, self.block_size, device)
    }

    /// Share `part` of `parts` of the next batch, on `device`: the stream advances by a whole
    /// batch (every share of it drawn from the same starts a lone process would draw), and only
    /// this share's windows are read. `parts` must divide the batch size.
    pub fn next_batch_share(
        &mut self,
        device: Device,
        part: usize,
        parts: usize,
    ) -> Result<Batch, DataError> {
        if parts == 0 || !self.batch_size.is_multiple_of(parts) || part >= parts {
            return Err(DataError::Uneven {
                batch_size: self.batch_size,
                parts,
            });
        }
        let starts = self.next_starts();
        let share = self.batch_size / parts;
        gather(
            &self.file,
            &starts[part * share..(part + 1) * share],
            self.block_size,
            device,
        )
    }

    /// The stream position, for a checkpoint.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            seed: self.seed,
            word_pos: self.rng.get_word_pos(),
        }
    }

    /// Continues from a saved position.
    pub fn restore(&mut self, state: SamplerState) {
        self.seed = state.seed;
        self.rng = ChaCha8Rng::seed_from_u64(state.seed);
        self.rng.set_word_pos(state.word_pos);
    }
}

/// A fixed, deterministic set of windows of a split, so that different weights are scored on
/// exactly the same tokens.
#[derive(Debug, Clone)]
pub struct ValidationWindows {
    file: Arc<TokenFile>,
    block_size: usize,
    starts: Vec<u64>,
}

impl ValidationWindows {
    /// `count` windows of `block_size` tokens spread evenly over the split, first at 0 and last
    /// at the end (fewer when the split has fewer distinct windows).
    pub fn new(file: Arc<TokenFile>, block_size: usize, count: usize) -> Result<Self, DataError> {
        if count == 0 {
            return Err(DataError::Zero {
                name: "eval windows",
            });
        }
        file.check_block(block_size)?;
        let last_start = file.len() - block_size as u64 - 1;
        let count = (count as u64).min(last_start + 1);
        let starts = if count == 1 {
            vec![0]
        } else {
            (0..count)
                .map(|i| (i as u128 * last_start as u128 / (count - 1) as u128) as u64)
                .collect()
        };
        Ok(ValidationWindows {
            file,
            block_size,
            starts,
        })
    }

    /// Every contiguous, non-overlapping window of the split, in order (the last partial one
    /// dropped): what a full evaluation averages over.
    pub fn contiguous(file: Arc<TokenFile>, block_size: usize) -> Result<Self, DataError> {
        file.check_block(block_size)?;
        let count = (file.len() - 1) / block_size as u64;
        let starts = (0..count).map(|i| i * block_size as u64).collect();
        Ok(ValidationWindows {
            file,
            block_size,
            starts,
        })
    }

    /// When some windows overlap (more were asked of [`new`](Self::new) than the split holds
    /// side by side): how many windows fit without overlapping. Overlapping windows share
    /// tokens, so their losses are not independent and a standard error over them understates
    /// the spread.
    pub fn overlap(&self) -> Option<u64> {
        let block = self.block_size as u64;
        self.starts
            .windows(2)
            .any(|w| w[1] - w[0] < block)
            .then(|| (self.file.len() - 1) / block)
    }

    /// The window start positions.
    pub fn starts(&self) -> &[u64] {
        &self.starts
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether there are no windows (never true for a constructed set).
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Tokens in each window.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The windows in batches of at most `batch_size`, on `device`.
    pub fn batches(
        &self,
        batch_size: usize,
        device: Device,
    ) -> impl Iterator<Item = Result<Batch, DataError>> + '_ {
        self.batches_share(batch_size, device, 0, 1)
            .map(|(_, batch)| batch)
    }

    /// Part `part` of `parts` of [`batches`](Self::batches): the batches whose index is
    /// `part` modulo `parts`, each with its index (for a rank of a data-parallel evaluation;
    /// the others' batches are not read).
    pub fn batches_share(
        &self,
        batch_size: usize,
        device: Device,
        part: usize,
        parts: usize,
    ) -> impl Iterator<Item = (usize, Result<Batch, DataError>)> + '_ {
        self.starts
            .chunks(batch_size.max(1))
            .enumerate()
            .skip(part)
            .step_by(parts.max(1))
            .map(move |(i, starts)| (i, gather(&self.file, starts, self.block_size, device)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_beyond_host_memory_is_an_error_not_an_abort() {
        assert_eq!(host_ids(3, 5).unwrap().capacity(), 15);
        // 2^60 ids of 8 bytes: more than any allocation may be.
        let err = host_ids(1 << 40, 1 << 20).unwrap_err();
        assert!(
            matches!(err, DataError::BatchTooLarge { windows, block, bytes }
                if windows == 1 << 40 && block == 1 << 20 && bytes == 1 << 64),
            "{err}"
        );
        // A count that overflows usize itself.
        let err = host_ids(usize::MAX / 2, 3).unwrap_err();
        assert!(
            err.to_string().contains("lower the batch or block size"),
            "{err}"
        );
    }
}
