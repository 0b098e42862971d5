pub mod file;
pub mod generator;
pub mod kafka;
pub mod stdin;
