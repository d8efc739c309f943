//! Skiff's benchmarks: criterion microbenchmarks of the per-request hot path in
//! `micro/micro.rs` (`cargo bench -p skiff-benches`), and the load harness against other
//! proxies in `load/run.sh`. Nothing here is part of the test suite's pass or fail.
