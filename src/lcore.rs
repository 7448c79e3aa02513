//! lcore (in progress)
