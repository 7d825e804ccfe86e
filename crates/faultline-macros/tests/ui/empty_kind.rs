#[derive(faultline_macros::JobArgs)]
#[job(kind = "")]
struct SendEmail;

fn main() {}
