//! The streaming JSON document splitter (`framing: json_documents`) on arbitrary bytes: every
//! byte is accounted for, no piece keeps more than the limit, nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = 64;
    let mut r = std::io::BufReader::with_capacity(7, data);
    let (mut buf, mut pos, mut total) = (Vec::new(), 0u64, 0u64);
    while let Some(f) = ward_engine::framing::read_document(&mut r, &mut buf, max, &mut pos).unwrap() {
        assert!(buf.len() <= max && buf.len() <= f.len);
        assert!(f.start >= total);
        total = f.start + f.len as u64;
    }
    assert_eq!(pos as usize, data.len());
});
