//! Image readers on small files the test writes (well-formed and malformed), and the real
//! datasets fetched from the registries, pinned by their published label counts.
mod common;

use std::path::Path;

use cdm::data::folder::read_folder;
use cdm::data::images::{idx_pair, load, read_digits, read_idx};
use cdm::data::{pixels_to_unit, Crop, FolderOptions, ImageSet, Split};
use common::{gzip, idx};
use tch::Kind;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn idx_pairs_raw_and_gzipped() {
    let dir = tempfile::tempdir().unwrap();
    let pixels = [0u8, 255, 51, 204, 0, 0, 0, 0, 255, 255, 255, 255];
    let image_bytes = idx(&[3, 2, 2], &pixels);
    let label_bytes = idx(&[3], &[7, 0, 9]);
    for (suffix, wrap) in [("", false), (".gz", true)] {
        let enc = |b: &[u8]| if wrap { gzip(b) } else { b.to_vec() };
        let images = write(dir.path(), &format!("img{suffix}"), &enc(&image_bytes));
        let labels = write(dir.path(), &format!("lab{suffix}"), &enc(&label_bytes));
        let set = idx_pair(&images, &labels).unwrap();
        assert_eq!(set.x.size(), [3, 1, 2, 2]);
        // Held as bytes, read as k/127.5 − 1.
        assert_eq!(Vec::<u8>::try_from(set.x.get(0).flatten(0, -1)).unwrap(), vec![0, 255, 51, 204]);
        let first = Vec::<f64>::try_from(pixels_to_unit(&set.x.get(0), Kind::Double).flatten(0, -1)).unwrap();
        assert_eq!(first, vec![-1.0, 1.0, 51.0 / 127.5 - 1.0, 204.0 / 127.5 - 1.0]);
        assert_eq!(Vec::<i64>::try_from(&set.labels).unwrap(), vec![7, 0, 9]);
    }
}

#[test]
fn malformed_idx_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let labels = write(dir.path(), "labels", &idx(&[2], &[1, 2]));
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("magic", vec![0, 0, 0x0d, 3, 0, 0, 0, 1], "not an unsigned-byte IDX file"),
        ("header", vec![0, 0, 0x08, 3, 0, 0], "header of 3 dimensions is truncated"),
        ("truncated", idx(&[2, 2, 2], &[0; 7]), "header says [2, 2, 2] (8 bytes), the file holds 7"),
        ("gzip", vec![0x1f, 0x8b, 1, 2, 3], "bad gzip data"),
    ];
    for (name, bytes, needle) in cases {
        let path = write(dir.path(), name, &bytes);
        let err = read_idx(&path).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
    }
    let images = write(dir.path(), "three", &idx(&[3, 1, 1], &[0; 3]));
    let err = idx_pair(&images, &labels).err().unwrap().to_string();
    assert!(err.contains("2 labels for 3 images"), "{err}");
}

#[test]
fn digits_csv() {
    let dir = tempfile::tempdir().unwrap();
    let row =
        |label: u8| (0..64).map(|i| (i % 17).to_string()).chain([label.to_string()]).collect::<Vec<_>>().join(",");
    let good = write(dir.path(), "good.csv.gz", &gzip(format!("{}\n{}\n", row(3), row(8)).as_bytes()));
    let set = read_digits(&good).unwrap();
    assert_eq!(set.x.size(), [2, 1, 8, 8]);
    assert_eq!(set.x.max().double_value(&[]), 1.0);
    assert_eq!(Vec::<i64>::try_from(&set.labels).unwrap(), vec![3, 8]);
    let bad = write(dir.path(), "bad.csv.gz", &gzip(b"1,2,3\n"));
    let err = read_digits(&bad).err().unwrap().to_string();
    assert!(err.contains("bad.csv.gz") && err.contains("row 0"), "{err}");
}

fn label_counts(labels: &tch::Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(labels.bincount::<&tch::Tensor>(None, 10)).unwrap()
}

#[test]
fn real_datasets_fetch_and_match_their_published_counts() {
    let mnist = load(ImageSet::Mnist, Split::Train).unwrap();
    assert_eq!(mnist.x.size(), [60000, 1, 28, 28]);
    assert_eq!(label_counts(&mnist.labels), vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);
    assert_eq!(
        (mnist.x.kind(), mnist.x.min().double_value(&[]), mnist.x.max().double_value(&[])),
        (Kind::Uint8, 0.0, 255.0)
    );
    assert_eq!(load(ImageSet::Mnist, Split::Test).unwrap().x.size(), [10000, 1, 28, 28]);
    let fashion = load(ImageSet::FashionMnist, Split::Test).unwrap();
    assert_eq!(label_counts(&fashion.labels), vec![1000; 10]);
    let digits = load(ImageSet::Digits, Split::Train).unwrap();
    assert_eq!(digits.x.size(), [1797, 1, 8, 8]);
    assert_eq!(label_counts(&digits.labels), vec![178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    assert!(digits.x.mean(Kind::Double).double_value(&[]) < 0.0);
    assert!(load(ImageSet::Digits, Split::Test).is_err());
}

#[test]
fn cifar10_batches() {
    use cdm::data::images::read_cifar10;
    let dir = tempfile::tempdir().unwrap();
    let record = |label: u8, value: u8| [vec![label], vec![value; 3072]].concat();
    for i in 1..=5u8 {
        write(dir.path(), &format!("data_batch_{i}.bin"), &[record(i, 0), record(9, 255)].concat());
    }
    write(dir.path(), "test_batch.bin", &record(3, 51));
    let train = read_cifar10(dir.path(), Split::Train).unwrap();
    assert_eq!(train.x.size(), [10, 3, 32, 32]);
    assert_eq!(Vec::<i64>::try_from(&train.labels).unwrap(), vec![1, 9, 2, 9, 3, 9, 4, 9, 5, 9]);
    assert_eq!((train.x.get(0).max().double_value(&[]), train.x.get(1).min().double_value(&[])), (0.0, 255.0));
    // Through a data spec, with the split option after the directory.
    let spec = format!("cifar10:{},split=test", dir.path().display());
    assert_eq!(cdm::data::Dataset::open(&spec).unwrap().shape(), vec![3, 32, 32]);
    write(dir.path(), "test_batch.bin", &record(3, 51)[..100]);
    let err = read_cifar10(dir.path(), Split::Test).err().unwrap().to_string();
    assert!(err.contains("test_batch.bin") && err.contains("not a whole number"), "{err}");
    write(dir.path(), "test_batch.bin", &record(12, 0));
    let err = read_cifar10(dir.path(), Split::Test).err().unwrap().to_string();
    assert!(err.contains("label 12"), "{err}");
}

#[test]
fn image_folders_are_resized_and_centre_cropped() {
    let read_folder = |dir: &Path, size| read_folder(dir, FolderOptions { size, crop: Crop::Centre }, None);
    let dir = tempfile::tempdir().unwrap();
    // 40×20, left half red, right half blue: the centre crop of the 32×16 resize keeps both.
    let img =
        image::RgbImage::from_fn(40, 20, |x, _| if x < 20 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
    img.save(dir.path().join("a.png")).unwrap();
    image::RgbImage::from_pixel(10, 10, image::Rgb([0, 255, 0])).save(dir.path().join("b.jpg")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let set = read_folder(dir.path(), Some(16)).unwrap();
    assert_eq!(set.x.size(), [2, 3, 16, 16]);
    let px = |i: i64, c: i64, y: i64, x: i64| set.x.double_value(&[i, c, y, x]);
    assert_eq!((px(0, 0, 8, 0), px(0, 2, 8, 0)), (255.0, 0.0), "left edge is red");
    assert_eq!((px(0, 0, 8, 15), px(0, 2, 8, 15)), (0.0, 255.0), "right edge is blue");
    assert!(px(1, 1, 8, 8) > 248.0, "the JPEG is green");
    std::fs::write(dir.path().join("c.png"), b"not a png").unwrap();
    let err = read_folder(dir.path(), Some(16)).err().unwrap().to_string();
    assert!(err.contains("c.png"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    assert!(read_folder(empty.path(), None).err().unwrap().to_string().contains("no .png"));
}

#[test]
fn eight_bit_images_are_told_from_other_data() {
    use cdm::data::is_8bit;
    let k = tch::Tensor::from_slice(&[0.0, 1.0, 128.0, 255.0]).reshape([1, 1, 2, 2]);
    assert!(is_8bit(&(&k / 127.5 - 1.0)));
    // The 8×8 digits have 17 grey levels, v/8 − 1: not on the 8-bit grid.
    assert!(!is_8bit(&(tch::Tensor::from_slice(&[0.0, 3.0, 9.0, 16.0]).reshape([1, 1, 2, 2]) / 8.0 - 1.0)));
    assert!(!is_8bit(&(&k / 127.5 - 1.0).reshape([1, 4])), "points, not images");
    assert!(!is_8bit(&(&k / 127.5 - 1.0 + 0.002)), "off the grid");
}

/// A 178×218 image whose pixel (x, y) is (x, y, x + y) (mod 256), so every crop is told apart.
fn celeba_like() -> image::RgbImage {
    image::RgbImage::from_fn(178, 218, |x, y| image::Rgb([x as u8, y as u8, (x + y) as u8]))
}

#[test]
fn celeba_crop_cuts_the_face_box_of_the_64_pixel_baselines() {
    use cdm::data::folder::celeba_crop;
    let img = celeba_like();
    // Kept at 128: the box's corner is pixel (25, 57) of the image, its last (152, 184).
    let box128 = celeba_crop(&img, 128, Path::new("a.png")).unwrap();
    assert_eq!(box128.dimensions(), (128, 128));
    assert_eq!(box128.get_pixel(0, 0).0, [25, 57, 82]);
    assert_eq!(box128.get_pixel(127, 127).0, [152, 184, 80]);
    // At 64, each pixel averages a 2×2 block of the box: x 25.5 + 2i, y 57.5 + 2j.
    let small = celeba_crop(&img, 64, Path::new("a.png")).unwrap();
    assert_eq!(small.dimensions(), (64, 64));
    let [r, g, _] = small.get_pixel(10, 20).0;
    assert!((r as f64 - 45.5).abs() <= 1.0 && (g as f64 - 97.5).abs() <= 1.0, "{r} {g}");
    let err = celeba_crop(&image::RgbImage::new(100, 100), 64, Path::new("small.png")).unwrap_err().to_string();
    assert!(err.contains("small.png") && err.contains("178×218"), "{err}");
    // Through a spec.
    let dir = tempfile::tempdir().unwrap();
    img.save(dir.path().join("000001.jpg")).unwrap();
    let data = cdm::data::Dataset::open(&format!("folder:{},size=64,crop=celeba", dir.path().display())).unwrap();
    assert_eq!(data.shape(), vec![3, 64, 64]);
    let bad = cdm::data::Dataset::open(&format!("folder:{},crop=square", dir.path().display()));
    assert!(bad.err().unwrap().to_string().contains("crop=square"));
}

#[test]
fn folders_are_cached_decoded_until_they_change() {
    use cdm::data::folder::cache_file;
    let (dir, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for i in 0..3u8 {
        image::RgbImage::from_pixel(20, 10, image::Rgb([i * 50, 7, 9]))
            .save(dir.path().join(format!("{i}.png")))
            .unwrap();
    }
    let options = FolderOptions { size: Some(8), crop: Crop::Centre };
    let first = read_folder(dir.path(), options, Some(cache.path())).unwrap();
    assert_eq!(first.x.size(), [3, 3, 8, 8]);
    let file = cache_file(dir.path(), options, cache.path()).unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), 40 + 3 * 3 * 8 * 8, "a header and the bytes");
    // A second open reads the cache: a byte changed there shows up in the images.
    let last = bytes.len() - 1;
    bytes[last] = 201;
    std::fs::write(&file, &bytes).unwrap();
    let second = read_folder(dir.path(), options, Some(cache.path())).unwrap();
    assert_eq!(second.x.double_value(&[2, 2, 7, 7]), 201.0);
    assert_eq!(second.x.narrow(0, 0, 2), first.x.narrow(0, 0, 2));
    // Other options, or a changed folder, are another key: decoded afresh.
    let other = FolderOptions { size: Some(4), crop: Crop::Centre };
    assert_ne!(cache_file(dir.path(), other, cache.path()).unwrap(), file);
    image::RgbImage::from_pixel(20, 10, image::Rgb([1, 2, 3])).save(dir.path().join("3.png")).unwrap();
    assert_ne!(cache_file(dir.path(), options, cache.path()).unwrap(), file);
    let third = read_folder(dir.path(), options, Some(cache.path())).unwrap();
    assert_eq!(third.x.size(), [4, 3, 8, 8]);
    assert_eq!(third.x.double_value(&[2, 2, 7, 7]), 9.0);
    // A truncated cache file is decoded anew, not trusted.
    let file = cache_file(dir.path(), options, cache.path()).unwrap();
    std::fs::write(&file, &std::fs::read(&file).unwrap()[..50]).unwrap();
    assert_eq!(read_folder(dir.path(), options, Some(cache.path())).unwrap().x, third.x);
}
