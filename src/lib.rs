pub mod ipc;
pub mod ring;
