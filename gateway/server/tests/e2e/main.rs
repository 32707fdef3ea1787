//! End-to-end tests: the real `keybridge` binary, real sockets, real files.

mod cli;
mod grpc;
mod harness;
mod lifecycle;
