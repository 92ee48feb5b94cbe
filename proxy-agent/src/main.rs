fn main() {
    let obj = include_bytes!(concat!(env!("OUT_DIR"), "/strait.o"));
    println!("{}", obj.len());
}
