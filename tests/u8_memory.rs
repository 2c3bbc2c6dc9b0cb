//! Image sets are held as bytes: loading a CIFAR-10-sized set (50 000 × 3 × 32 × 32, written
//! here as official batches) adds about its byte size to the resident memory, not the 8×
//! of Double values. Alone in its binary, so no other test moves the process's memory.
use cdm::data::Dataset;
use tch::Kind;

/// Resident memory of this process in bytes (VmRSS of /proc/self/status).
fn resident() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn a_cifar_sized_set_costs_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=5 {
        let batch: Vec<u8> = (0..10_000usize)
            .flat_map(|r| std::iter::once((r % 10) as u8).chain((0..3072usize).map(move |p| (p * 7 + r) as u8)))
            .collect();
        std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), batch).unwrap();
    }
    // libtorch's first operations map memory of their own: done before measuring.
    let _ = (tch::Tensor::from_slice(&[1u8, 2]).to_kind(Kind::Float) + 1.0).sum(Kind::Float);
    let before = resident();
    let data = Dataset::open(&format!("cifar10:{}", dir.path().display())).unwrap();
    let added = resident().saturating_sub(before);
    let bytes = 50_000 * 3072u64;
    eprintln!("resident memory added: {added} bytes for {bytes} bytes of pixels");
    assert!(matches!(data, Dataset::Images { .. }));
    assert_eq!(data.shape(), vec![3, 32, 32]);
    // 154 MB of pixels: a Float copy would add 614 MB, a Double one 1.2 GB.
    assert!(added < bytes * 3 / 2, "loading {bytes} bytes of pixels added {added} bytes of resident memory");
    assert!(added > bytes / 2, "the pixels are resident: {added} bytes added");
}
