pub mod file;
pub mod generator;
pub mod stdin;
