//! Image-classification data for [`crate::Vit`]: labelled images batched into pixel tensors, and
//! the bundled handwritten digits (`data/digits/`, scikit-learn's 8×8 set). Any Burn data
//! pipeline that yields [`ImageBatch`] works with the model.

use std::path::Path;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{Error, Result, io};

/// One grey image and its class.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledImage {
    /// Pixels row by row, scaled to [0, 1].
    pub pixels: Vec<f32>,
    /// The class, from 0.
    pub label: usize,
}

/// A batch of images and their classes.
#[derive(Clone, Debug)]
pub struct ImageBatch {
    /// Pixels `[batch, channels, height, width]`.
    pub images: Tensor<4>,
    /// Classes `[batch]`.
    pub targets: Tensor<1, Int>,
}

/// Batches square one-channel images of `side` × `side` pixels into [`ImageBatch`]es.
#[derive(Clone, Debug)]
pub struct ImageBatcher {
    side: usize,
}

impl ImageBatcher {
    /// A batcher of `side` × `side` images.
    pub fn new(side: usize) -> Self {
        ImageBatcher { side }
    }
}

impl Batcher<LabelledImage, ImageBatch> for ImageBatcher {
    fn batch(&self, items: Vec<LabelledImage>, device: &Device) -> ImageBatch {
        let batch = items.len();
        let side = self.side;
        let mut pixels = Vec::with_capacity(batch * side * side);
        let mut labels = Vec::with_capacity(batch);
        for item in items {
            // The dataset checked the size; a foreign item of another size is cut or padded
            // rather than misaligning the batch.
            pixels.extend(
                item.pixels
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(0.0))
                    .take(side * side),
            );
            labels.push(item.label as i64);
        }
        ImageBatch {
            images: Tensor::from_data(TensorData::new(pixels, [batch, 1, side, side]), device),
            targets: Tensor::from_data(TensorData::new(labels, [batch]), device),
        }
    }
}

/// The handwritten digits of `data/digits/digits.csv`: 1,797 grey 8×8 images, 10 classes.
pub struct Digits;

impl Digits {
    /// Side of an image, in pixels.
    pub const SIDE: usize = 8;
    /// Number of classes.
    pub const CLASSES: usize = 10;

    /// Reads the digits file (64 pixel values 0–16 then the label, per line), scaling pixels
    /// to [0, 1]. A malformed line is refused with its number.
    pub fn load(path: &Path) -> Result<Vec<LabelledImage>> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let bad = |line: usize, message: String| Error::Mismatch {
            path: path.to_path_buf(),
            message: format!("line {line}: {message}"),
        };
        let pixels = Self::SIDE * Self::SIDE;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                let values = line
                    .split(',')
                    .map(|v| v.trim().parse::<u8>())
                    .collect::<std::result::Result<Vec<u8>, _>>()
                    .map_err(|e| bad(i + 1, format!("not an integer 0-255: {e}")))?;
                let Some((&label, image)) = values.split_last() else {
                    return Err(bad(i + 1, "empty".into()));
                };
                if image.len() != pixels {
                    return Err(bad(
                        i + 1,
                        format!("{} pixel values, expected {pixels}", image.len()),
                    ));
                }
                if usize::from(label) >= Self::CLASSES || image.iter().any(|&p| p > 16) {
                    return Err(bad(i + 1, "a label above 9 or a pixel above 16".into()));
                }
                Ok(LabelledImage {
                    pixels: image.iter().map(|&p| f32::from(p) / 16.0).collect(),
                    label: usize::from(label),
                })
            })
            .collect()
    }

    /// Splits `images` into training and validation sets: every `every`-th image validates.
    pub fn split(
        images: Vec<LabelledImage>,
        every: usize,
    ) -> (InMemDataset<LabelledImage>, InMemDataset<LabelledImage>) {
        let every = every.max(2);
        let (mut train, mut valid) = (Vec::new(), Vec::new());
        for (i, image) in images.into_iter().enumerate() {
            if i % every == every - 1 {
                valid.push(image);
            } else {
                train.push(image);
            }
        }
        (InMemDataset::new(train), InMemDataset::new(valid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_line_is_refused_with_its_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("digits.csv");
        let good = vec!["0"; 65].join(",");
        std::fs::write(&path, format!("{good}\n1,2,3\n")).expect("write");
        let error = Digits::load(&path).expect_err("refused").to_string();
        assert!(
            error.contains("line 2") && error.contains("2 pixel values"),
            "{error}"
        );
    }

    #[test]
    fn images_are_batched_with_their_labels() {
        let image = |label| LabelledImage {
            pixels: vec![0.5; 64],
            label,
        };
        let batch = ImageBatcher::new(8).batch(vec![image(3), image(7)], &Device::flex());
        assert_eq!(batch.images.dims(), [2, 1, 8, 8]);
        assert_eq!(
            batch
                .targets
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .expect("labels"),
            [3, 7]
        );
    }
}
