//! The dataset layer against hand-built token files.

use std::path::Path;

use lawa_core::data::{
    BatchSampler, DataError, Dataset, DatasetMeta, Split, SplitMethod, TokenFile, ValidationWindows,
};

fn write_tokens(path: &Path, ids: &[u16]) {
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn meta(vocab: u32, train: u64, val: u64) -> DatasetMeta {
    DatasetMeta {
        tokenizer: "byte".into(),
        tokenizer_file: None,
        vocab_size: vocab,
        eot_token: Some(vocab - 1),
        train_tokens: train,
        val_tokens: val,
        train_documents: 1,
        val_documents: 1,
        split: SplitMethod::Document,
        val_fraction: 0.1,
        source: "test".into(),
        source_sha256: "0".into(),
        ..DatasetMeta::nanogpt_gpt2(0, 0)
    }
}

/// A dataset whose token at position i is i % vocab (so windows are easy to check).
fn ramp_dataset(dir: &Path, train: usize, val: usize, vocab: u32) -> Dataset {
    let ramp = |n: usize| {
        (0..n)
            .map(|i| (i % vocab as usize) as u16)
            .collect::<Vec<_>>()
    };
    write_tokens(&dir.join("train.bin"), &ramp(train));
    write_tokens(&dir.join("val.bin"), &ramp(val));
    meta(vocab, train as u64, val as u64).save(dir).unwrap();
    Dataset::open(dir).unwrap()
}

/// Shares of a batch, one per rank, are the rows of the batch a lone process draws, in order;
/// every share advances the stream by a whole batch.
#[test]
fn batch_shares_are_the_whole_batch_split_by_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = ramp_dataset(dir.path(), 5000, 500, 60_000);
    let sampler = || BatchSampler::new(data.split(Split::Train), 6, 8, 3).unwrap();
    let mut whole = sampler();
    let mut shares: Vec<BatchSampler> = (0..3).map(|_| sampler()).collect();
    for _ in 0..4 {
        let batch = whole.next_batch(tch::Device::Cpu).unwrap();
        for (part, s) in shares.iter_mut().enumerate() {
            let share = s.next_batch_share(tch::Device::Cpu, part, 3).unwrap();
            assert_eq!(share.x.size(), [2, 8]);
            assert!(share.x.equal(&batch.x.narrow(0, 2 * part as i64, 2)));
            assert!(share.y.equal(&batch.y.narrow(0, 2 * part as i64, 2)));
        }
    }
    assert_eq!(
        shares[2].state(),
        whole.state(),
        "the stream moved by whole batches"
    );
    let e = sampler()
        .next_batch_share(tch::Device::Cpu, 0, 4)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "a batch of 6 sequences does not split into 4 equal shares"
    );
}

#[test]
fn batches_are_shifted_windows_and_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let data = ramp_dataset(dir.path(), 5000, 500, 60_000);
    let mut a = BatchSampler::new(data.split(Split::Train), 4, 16, 7).unwrap();
    let mut b = BatchSampler::new(data.split(Split::Train), 4, 16, 7).unwrap();
    let mut c = BatchSampler::new(data.split(Split::Train), 4, 16, 8).unwrap();
    let (ba, bb, bc) = (
        a.next_batch(tch::Device::Cpu).unwrap(),
        b.next_batch(tch::Device::Cpu).unwrap(),
        c.next_batch(tch::Device::Cpu).unwrap(),
    );
    assert_eq!(ba.x.size(), [4, 16]);
    assert!(
        ba.x.equal(&bb.x) && ba.y.equal(&bb.y),
        "same seed, same batch"
    );
    assert!(!ba.x.equal(&bc.x), "another seed, another batch");
    let x: Vec<i64> = Vec::try_from(ba.x.flatten(0, -1)).unwrap();
    let y: Vec<i64> = Vec::try_from(ba.y.flatten(0, -1)).unwrap();
    for row in 0..4 {
        let start = x[row * 16];
        for t in 0..16 {
            assert_eq!(x[row * 16 + t], start + t as i64, "contiguous window");
            assert_eq!(
                y[row * 16 + t],
                start + t as i64 + 1,
                "targets shifted by one"
            );
        }
        assert!(start + 16 < 5000);
    }
}

#[test]
fn sampler_resumes_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let data = ramp_dataset(dir.path(), 3000, 300, 60_000);
    let mut straight = BatchSampler::new(data.split(Split::Train), 3, 8, 1).unwrap();
    let mut first = BatchSampler::new(data.split(Split::Train), 3, 8, 1).unwrap();
    for _ in 0..5 {
        assert_eq!(straight.next_starts(), first.next_starts());
    }
    let saved = first.state();
    let mut resumed = BatchSampler::new(data.split(Split::Train), 3, 8, 999).unwrap();
    resumed.restore(saved);
    for _ in 0..5 {
        assert_eq!(straight.next_starts(), resumed.next_starts());
    }
}

#[test]
fn validation_windows_are_fixed_and_cover_the_split() {
    let dir = tempfile::tempdir().unwrap();
    let data = ramp_dataset(dir.path(), 1000, 1001, 60_000);
    let w = ValidationWindows::new(data.split(Split::Val), 100, 11).unwrap();
    // Last valid start is 1001 - 100 - 1 = 900; 11 evenly spaced starts from 0 to 900.
    assert_eq!(
        w.starts(),
        &[0, 90, 180, 270, 360, 450, 540, 630, 720, 810, 900]
    );
    let again = ValidationWindows::new(data.split(Split::Val), 100, 11).unwrap();
    assert_eq!(w.starts(), again.starts());
    // 11 windows 90 tokens apart overlap; 10 fit side by side (starts 0, 100, ..., 900).
    assert_eq!(w.overlap(), Some(10));
    let apart = ValidationWindows::new(data.split(Split::Val), 100, 10).unwrap();
    assert_eq!((apart.starts()[1], apart.overlap()), (100, None));
    let batches: Vec<_> = w
        .batches(4, tch::Device::Cpu)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        batches.iter().map(|b| b.x.size()[0]).collect::<Vec<_>>(),
        [4, 4, 3]
    );
    let last: Vec<i64> = Vec::try_from(batches[2].y.get(2)).unwrap();
    assert_eq!(last[99], 1000, "the last window ends on the last token");
    // More windows than distinct starts: clamped, no duplicates.
    let many = ValidationWindows::new(data.split(Split::Val), 995, 50).unwrap();
    assert_eq!(many.starts(), &[0, 1, 2, 3, 4, 5]);
}

#[test]
fn contiguous_windows_drop_the_partial_tail() {
    let dir = tempfile::tempdir().unwrap();
    let data = ramp_dataset(dir.path(), 1000, 350, 60_000);
    let w = ValidationWindows::contiguous(data.split(Split::Val), 100).unwrap();
    // 350 tokens: windows need 101 tokens; starts 0, 100, 200 (300 would need token 400).
    assert_eq!(w.starts(), &[0, 100, 200]);
}

#[test]
fn block_longer_than_split_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = ramp_dataset(dir.path(), 1000, 50, 60_000);
    let err = ValidationWindows::new(data.split(Split::Val), 64, 10).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BlockTooLong {
                needed: 65,
                tokens: 50,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("val.bin") && msg.contains("block size 64"),
        "{msg}"
    );
    assert!(BatchSampler::new(data.split(Split::Train), 2, 1000, 0).is_err());
    assert!(matches!(
        BatchSampler::new(data.split(Split::Train), 0, 10, 0),
        Err(DataError::Zero { name: "batch_size" })
    ));
}

#[test]
fn odd_length_bin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.bin");
    std::fs::write(&path, [1u8, 0, 2]).unwrap();
    let err = TokenFile::open(&path, 100).unwrap_err();
    assert!(
        matches!(err, DataError::OddLength { bytes: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("train.bin"));
}

#[test]
fn ids_beyond_the_vocabulary_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("val.bin");
    write_tokens(&path, &[1, 2, 3, 300, 4]);
    let file = TokenFile::open(&path, 257).unwrap();
    let mut out = Vec::new();
    file.read_i64(0, 3, &mut out).unwrap();
    assert_eq!(out, [1, 2, 3], "ids before the bad one read fine");
    let err = file.read_i64(1, 4, &mut out).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TokenOutOfRange {
                position: 3,
                id: 300,
                vocab_size: 257,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        file.check_all_ids(),
        Err(DataError::TokenOutOfRange { position: 3, .. })
    ));
}

#[test]
fn a_file_truncated_while_in_use_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.bin");
    write_tokens(&path, &(0..1000).collect::<Vec<u16>>());
    let file = std::sync::Arc::new(TokenFile::open(&path, 1000).unwrap());
    let mut sampler = BatchSampler::new(file, 8, 64, 0).unwrap();
    sampler.next_batch(tch::Device::Cpu).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    let err = (0..20)
        .find_map(|_| sampler.next_batch(tch::Device::Cpu).err())
        .expect("a window past the new end")
        .to_string();
    assert!(err.contains("train.bin") && err.contains("shrank"), "{err}");
}

#[test]
fn empty_bin_and_missing_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.bin"), []).unwrap();
    assert!(matches!(
        TokenFile::open(&dir.path().join("train.bin"), 10),
        Err(DataError::Empty { .. })
    ));
    let err = Dataset::open(dir.path().join("nowhere")).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err}");
    // train.bin empty, val.bin missing: the first problem found is reported.
    assert!(Dataset::open(dir.path()).is_err());
}

#[test]
fn nanogpt_folder_without_meta_reads_as_gpt2() {
    let dir = tempfile::tempdir().unwrap();
    write_tokens(&dir.path().join("train.bin"), &[50256, 15496, 995, 50256]);
    write_tokens(&dir.path().join("val.bin"), &[15496, 995]);
    let data = Dataset::open(dir.path()).unwrap();
    assert_eq!(data.meta().tokenizer, "gpt2");
    assert_eq!(data.meta().vocab_size, 50_257);
    assert_eq!(data.meta().train_tokens, 4);
    let mut ids = Vec::new();
    data.split(Split::Val).read_i64(0, 2, &mut ids).unwrap();
    assert_eq!(ids, [15496, 995]);
    // An id of 50257 or more is not GPT-2.
    write_tokens(&dir.path().join("val.bin"), &[15496, 50257]);
    let data = Dataset::open(dir.path()).unwrap();
    assert!(matches!(
        data.split(Split::Val).check_all_ids(),
        Err(DataError::TokenOutOfRange { id: 50257, .. })
    ));
}

#[test]
fn meta_disagreeing_with_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    ramp_dataset(dir.path(), 100, 50, 1000);
    meta(1000, 100, 49).save(dir.path()).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                expected: 49,
                actual: 50,
                ..
            }
        ),
        "{err}"
    );
    std::fs::write(dir.path().join("meta.json"), "{\"tokenizer\": 3}").unwrap();
    let err = Dataset::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("meta.json"), "{err}");
    let mut m = meta(1000, 100, 50);
    m.vocab_size = 70_000;
    m.save(dir.path()).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("vocab_size 70000"), "{err}");
}
