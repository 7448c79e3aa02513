//! mempool (in progress)
