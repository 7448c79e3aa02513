//! `rvhost dma`: the copy engines' devices. [`models`] builds channels over the IOAT and DSA
//! models for `--copy ioat-model|dsa-model`.

pub mod models;
