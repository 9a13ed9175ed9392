//! Replays the fuzz targets' seed corpus and every input a fuzzer ever
//! crashed on (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`)
//! through the same bodies the fuzzer runs (`fuzz/harness.rs`), so the
//! suite fails if a fixed crash comes back. `docs/fuzzing.md` says how to
//! fuzz.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.expect("dir entry").path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).expect("read corpus file");
            let name = f.display().to_string();
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                panic!("{name} fails (rerun: cargo fuzz run {target} {name})");
            }
            n += 1;
        }
    }
    assert!(n > 0, "no corpus for {target}");
}

#[test]
fn http_request_corpus() {
    replay("http_request", harness::http_request);
}

#[test]
fn api_params_corpus() {
    replay("api_params", harness::api_params);
}

#[test]
fn beat_json_corpus() {
    replay("beat_json", harness::beat_json);
}

#[test]
fn datum_batch_corpus() {
    replay("datum_batch", harness::datum_batch);
    // The seeds must decode, or the target would stop at the decoder.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/datum_batch");
    for e in std::fs::read_dir(dir).expect("seed corpus") {
        let path = e.expect("dir entry").path();
        let data = std::fs::read(&path).expect("read seed");
        let decoded: Result<Vec<distro_registry::store::datum::Datum>, _> =
            serde_json::from_slice(&data);
        assert!(decoded.is_ok(), "{}: {:?}", path.display(), decoded.err());
    }
}

#[test]
fn grpc_payload_corpus() {
    replay("grpc_payload", harness::grpc_payload);
}

#[test]
fn access_token_corpus() {
    replay("access_token", harness::access_token);
    // The "valid" seed is a token of the harness's signer, or the target
    // would never reach its accepting branch.
    let seed =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/access_token/valid"))
            .expect("seed");
    let signer =
        distro_registry::auth::token::Signer::from_key(b"distro-registry-fuzz-token-key!!");
    let c = signer
        .verify(std::str::from_utf8(&seed).unwrap(), 1_700_000_000)
        .expect("the valid seed verifies");
    assert_eq!((c.sub.as_str(), c.exp), ("nacos", 1_800_000_000));
}
