//! End-to-end tests: the real `keybridge` binary, real sockets, real files.

mod audit;
mod authz;
mod cli;
mod clouds;
mod conformance;
mod database;
mod grpc;
mod ha;
mod harness;
mod lifecycle;
mod limits;
mod login;
mod pki;
mod plugins;
mod postgres;
mod python;
mod rotation;
mod seal;
mod sync;
mod telemetry;
