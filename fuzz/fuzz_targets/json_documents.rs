//! The streaming JSON record splitter (`framing: json_documents`, with and without envelope
//! unwrapping) on arbitrary bytes: every byte is accounted for, no piece keeps more than the
//! limit, pieces come in order, nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = 64;
    for unwrap in [false, true] {
        let mut r = std::io::BufReader::with_capacity(7, data);
        let mut reader = ward_engine::framing::RecordReader::new(unwrap);
        let (mut buf, mut after) = (Vec::new(), 0u64);
        while let Some(f) = reader.next(&mut r, &mut buf, max).unwrap() {
            assert!(buf.len() <= max && buf.len() <= f.len);
            assert!(f.start >= after);
            after = f.start + f.len as u64;
            assert!(after <= reader.pos());
        }
        assert_eq!(reader.pos() as usize, data.len());
    }
});
