#[derive(faultline_macros::JobArgs)]
#[job(kind = "email.send", quue = "mail")]
struct SendEmail;

fn main() {}
