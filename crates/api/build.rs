//! Generates the gRPC code from proto/ (needs protoc: `apt-get install protobuf-compiler`).

fn main() {
    let proto = "../../proto/podshaper/v1/shaper.proto";
    println!("cargo:rerun-if-changed={proto}");
    if std::process::Command::new(std::env::var("PROTOC").unwrap_or_else(|_| "protoc".into()))
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "error: protoc is not installed: install it with `apt-get install protobuf-compiler`"
        );
        std::process::exit(1);
    }
    if let Err(e) = tonic_prost_build::configure().compile_protos(&[proto], &["../../proto"]) {
        eprintln!("error: cannot compile {proto}: {e}");
        std::process::exit(1);
    }
}
