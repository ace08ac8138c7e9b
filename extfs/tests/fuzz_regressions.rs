//! Inputs the fuzzer (extfs/fuzz) once found troublesome, replayed through
//! the same code path as the fuzz target.

#[test]
fn fuzz_regressions_do_not_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) == Some("md") {
            continue;
        }
        let data = std::fs::read(&p).unwrap();
        let start = std::time::Instant::now();
        extfs::fuzzing::exercise(&data);
        eprintln!("{}: {:?}", p.display(), start.elapsed());
        n += 1;
    }
    eprintln!("{n} regression inputs replayed");
}
