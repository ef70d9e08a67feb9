//! Narinfo records come from caches and from disk: any bytes must parse to a record or to
//! a typed error, never a panic. A record that parses must render to text that parses back
//! to the same record and renders to the same bytes (render is a fixed point), and
//! verifying or fingerprinting it must not panic either.
#![no_main]

use bento::nix::narinfo;
use bento_fuzz::key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(info) = narinfo::parse(data) else {
        return;
    };
    let text = narinfo::render(&info);
    let again = match narinfo::parse(&text) {
        Ok(again) => again,
        Err(e) => panic!(
            "rendered narinfo does not parse: {e}\ninput: {:?}\nrendered: {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&text)
        ),
    };
    assert_eq!(
        info,
        again,
        "parse(render(x)) != x\ninput: {:?}\nrendered: {:?}",
        String::from_utf8_lossy(data),
        String::from_utf8_lossy(&text)
    );
    assert_eq!(narinfo::render(&again), text, "render is not a fixed point");
    let (_, public) = key();
    let _ = narinfo::verify(&info, public);
    let _ = info.fingerprint(&bento::nix::store::store_dir());
});
