pub mod codec;
pub mod ipc;
pub mod ring;
