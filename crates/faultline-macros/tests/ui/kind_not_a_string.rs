#[derive(faultline_macros::JobArgs)]
#[job(kind = 42)]
struct SendEmail;

fn main() {}
