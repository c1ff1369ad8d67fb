#[path = "wrappers/sqlite.rs"]
mod sqlite;
fn main() {
    let c = sqlite::Connection::open_in_memory().unwrap();
    c.execute_batch("create table t(a, b)").unwrap();
    let mut s = c.prepare("insert into t values (?1, ?2)").unwrap();
    s.bind_text(1, "x").unwrap();
    s.bind_blob(2, b"yz").unwrap();
    s.step().unwrap();
    drop(s);
    let mut s = c.prepare("select a, b from t").unwrap();
    while s.step().unwrap() {
        println!("{:?} {:?}", s.column(0), s.column(1));
    }
    println!("{:?}", sqlite::quote("it's").unwrap());
}
