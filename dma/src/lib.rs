//! rvhost-dma: copy engines behind one trait (in progress).
