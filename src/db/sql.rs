//! One connection type for both engines: SQLite (embedded, one box) and
//! PostgreSQL (shared by several instances). Queries are written once, with
//! `?1`, `?2` … placeholders (rewritten to `$1`, `$2` for PostgreSQL), take
//! parameters as `&[&dyn ToValue]` and give rows of owned [`Value`]s read with
//! [`Row::get`]. Only SQL both engines understand goes through here; where
//! they truly differ, [`Conn::engine`] tells which one runs.

use std::cell::RefCell;
use std::collections::HashMap;

use postgres::types::{IsNull, ToSql, Type};

/// Which database engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The embedded file in the data directory.
    Sqlite,
    /// A PostgreSQL server, shared by several instances.
    Postgres,
}

/// What went wrong running SQL.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// SQLite said no.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said no (or the connection broke).
    #[error("{}", pg_text(.0))]
    Postgres(#[from] postgres::Error),
    /// A column did not hold what the caller asked for.
    #[error("column {column}: {detail}")]
    Column {
        /// Its index in the row.
        column: usize,
        /// What was found instead.
        detail: String,
    },
    /// Anything else (e.g. a table name that is not one of the schema's).
    #[error("{0}")]
    Other(String),
}

/// PostgreSQL's own words (`db error: ...` alone hides the message and detail).
fn pg_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{}: {} ({d})", db.severity(), db.message()),
            None => format!("{}: {}", db.severity(), db.message()),
        },
        None => e.to_string(),
    }
}

/// One value of a column or parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Any integer (INTEGER columns hold i64 on both engines).
    Int(i64),
    /// A floating point number.
    Real(f64),
    /// Text.
    Text(String),
    /// Bytes (BLOB on SQLite, BYTEA on PostgreSQL).
    Blob(Vec<u8>),
    /// A boolean (PostgreSQL's comparisons and EXISTS give these; stored as 0/1).
    Bool(bool),
}

/// A Rust value usable as a query parameter.
pub trait ToValue {
    /// The value to send.
    fn to_value(&self) -> Value;
}

/// A Rust value readable from a column.
pub trait FromValue: Sized {
    /// Converts, or says what the column held instead.
    fn from_value(v: &Value) -> Result<Self, String>;
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                Value::Int(*self as i64)
            }
        }
        impl FromValue for $t {
            fn from_value(v: &Value) -> Result<Self, String> {
                match v {
                    Value::Int(i) => <$t>::try_from(*i).map_err(|_| format!("{i} out of range")),
                    Value::Bool(b) => Ok(<$t>::from(*b)),
                    other => Err(format!("expected an integer, found {other:?}")),
                }
            }
        }
    )*};
}
int_value!(i64, i32, u32, u64, u8);

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Bool(b) => Ok(*b),
            Value::Int(i) => Ok(*i != 0),
            other => Err(format!("expected a boolean, found {other:?}")),
        }
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}
impl FromValue for f64 {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Real(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            other => Err(format!("expected a number, found {other:?}")),
        }
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl FromValue for Value {
    fn from_value(v: &Value) -> Result<Self, String> {
        Ok(v.clone())
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Value>);

impl Row {
    /// Column `i`, converted.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, SqlError> {
        let v = self.0.get(i).ok_or_else(|| SqlError::Column {
            column: i,
            detail: format!("the row has {} columns", self.0.len()),
        })?;
        T::from_value(v).map_err(|detail| SqlError::Column { column: i, detail })
    }
}

/// A PostgreSQL client and its prepared statements (prepared once per
/// connection: preparing costs a round trip).
pub(super) struct PgClient {
    client: Option<postgres::Client>,
    prepared: HashMap<String, postgres::Statement>,
}

/// Statements kept prepared per connection, at most.
const MAX_PREPARED: usize = 256;

impl PgClient {
    pub(super) fn new(client: postgres::Client) -> PgClient {
        PgClient {
            client: Some(client),
            prepared: HashMap::new(),
        }
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, SqlError> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let client = self.client.as_mut().expect("client taken");
        let s = off_runtime(|| client.prepare(&dollar_placeholders(sql)))?;
        if self.prepared.len() >= MAX_PREPARED {
            self.prepared.clear();
        }
        self.prepared.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

impl PgClient {
    /// Prepares `sql` (cached) and runs `call` with the client, the statement
    /// and `vals` as parameters, outside any tokio runtime.
    fn run<T: Send>(
        &mut self,
        sql: &str,
        vals: &[Value],
        call: impl FnOnce(
                &mut postgres::Client,
                &postgres::Statement,
                &[&(dyn ToSql + Sync)],
            ) -> Result<T, postgres::Error>
            + Send,
    ) -> Result<T, SqlError> {
        let st = self.statement(sql)?;
        let client = self.client.as_mut().expect("client taken");
        let refs: Vec<&(dyn ToSql + Sync)> =
            vals.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        Ok(off_runtime(|| call(client, &st, &refs))?)
    }
}

impl Drop for PgClient {
    fn drop(&mut self) {
        // Closing the client runs its own small runtime, which must not start
        // inside another one (e.g. a Db dropped in async code).
        if let Some(c) = self.client.take() {
            off_runtime(move || drop(c));
        }
    }
}

/// Runs `f` (which may start the postgres client's own runtime) outside of
/// any tokio runtime: on a scoped thread when called from async code.
pub(super) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// `?1`, `?2` … as PostgreSQL's `$1`, `$2` …, outside quoted text.
pub fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // The server decides a parameter's type from the statement; the value
        // is sent in that type where it fits (an i64 into an int4 when in range).
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                _ => i.to_string().as_str().to_sql(ty, out),
            },
            Value::Bool(b) => match *ty {
                Type::BOOL => b.to_sql(ty, out),
                _ => Value::Int(i64::from(*b)).to_sql(ty, out),
            },
            Value::Real(f) => f.to_sql(ty, out),
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn pg_row(row: &postgres::Row) -> Result<Row, SqlError> {
    let mut vals = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let v = match *col.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::BOOL => row.try_get::<_, Option<bool>>(i)?.map(Value::Bool),
            Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Value::Real),
            Type::FLOAT4 => row
                .try_get::<_, Option<f32>>(i)?
                .map(|v| Value::Real(v.into())),
            Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
            // pg_advisory_xact_lock and the like return nothing.
            Type::VOID => None,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                row.try_get::<_, Option<String>>(i)?.map(Value::Text)
            }
            ref other => {
                return Err(SqlError::Column {
                    column: i,
                    detail: format!("type {other} is not read; CAST it in the query"),
                })
            }
        };
        vals.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(vals))
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn sqlite_param(v: Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match v {
        Value::Null => S::Null,
        Value::Int(i) => S::Integer(i),
        Value::Bool(b) => S::Integer(b.into()),
        Value::Real(f) => S::Real(f),
        Value::Text(t) => S::Text(t),
        Value::Blob(b) => S::Blob(b),
    }
}

/// A connection to either engine. Not shared between threads at once (the
/// pool and the writer each own theirs).
pub struct Conn(Inner);

enum Inner {
    Sqlite(rusqlite::Connection),
    Postgres(Box<RefCell<PgClient>>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Conn({:?})", self.engine())
    }
}

impl Conn {
    /// Wraps an SQLite connection.
    pub fn sqlite(c: rusqlite::Connection) -> Conn {
        Conn(Inner::Sqlite(c))
    }

    /// The SQLite connection back, when it is one.
    pub fn into_sqlite(self) -> Option<rusqlite::Connection> {
        match self.0 {
            Inner::Sqlite(c) => Some(c),
            Inner::Postgres(_) => None,
        }
    }

    pub(super) fn postgres(c: postgres::Client) -> Conn {
        Conn(Inner::Postgres(Box::new(RefCell::new(PgClient::new(c)))))
    }

    /// Which engine this is.
    pub fn engine(&self) -> Engine {
        match self.0 {
            Inner::Sqlite(_) => Engine::Sqlite,
            Inner::Postgres(_) => Engine::Postgres,
        }
    }

    /// The SQLite connection, for the file's own checks and repair.
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.0 {
            Inner::Sqlite(c) => Some(c),
            Inner::Postgres(_) => None,
        }
    }

    /// Whether the connection is gone (PostgreSQL: the server closed it);
    /// a new one is needed.
    pub fn is_broken(&self) -> bool {
        match &self.0 {
            Inner::Sqlite(_) => false,
            Inner::Postgres(pg) => pg.borrow().client.as_ref().is_none_or(|c| c.is_closed()),
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn ToValue]) -> Result<u64, SqlError> {
        let vals: Vec<Value> = params.iter().map(|p| p.to_value()).collect();
        match &self.0 {
            Inner::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let n = st.execute(rusqlite::params_from_iter(
                    vals.into_iter().map(sqlite_param),
                ))?;
                Ok(n as u64)
            }
            Inner::Postgres(pg) => pg
                .borrow_mut()
                .run(sql, &vals, |client, st, refs| client.execute(st, refs)),
        }
    }

    /// Runs a query; every row.
    pub fn query(&self, sql: &str, params: &[&dyn ToValue]) -> Result<Vec<Row>, SqlError> {
        let vals: Vec<Value> = params.iter().map(|p| p.to_value()).collect();
        match &self.0 {
            Inner::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let n = st.column_count();
                let mut rows = st.query(rusqlite::params_from_iter(
                    vals.into_iter().map(sqlite_param),
                ))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut vals = Vec::with_capacity(n);
                    for i in 0..n {
                        vals.push(sqlite_value(r.get_ref(i)?));
                    }
                    out.push(Row(vals));
                }
                Ok(out)
            }
            Inner::Postgres(pg) => pg
                .borrow_mut()
                .run(sql, &vals, |client, st, refs| client.query(st, refs))?
                .iter()
                .map(pg_row)
                .collect(),
        }
    }

    /// Runs a query; its first row, if any.
    pub fn query_opt(&self, sql: &str, params: &[&dyn ToValue]) -> Result<Option<Row>, SqlError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Runs a query that yields a row; its first row.
    pub fn query_one(&self, sql: &str, params: &[&dyn ToValue]) -> Result<Row, SqlError> {
        self.query_opt(sql, params)?
            .ok_or_else(|| SqlError::Other(format!("no row from {sql}")))
    }

    /// Runs statements without parameters (DDL, BEGIN, COMMIT …).
    pub fn batch(&self, sql: &str) -> Result<(), SqlError> {
        match &self.0 {
            Inner::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Inner::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let client = pg.client.as_mut().expect("client taken");
                Ok(off_runtime(|| client.batch_execute(sql))?)
            }
        }
    }

    /// Runs `f` in a transaction that writes: committed when `f` succeeds,
    /// rolled back when it fails. On SQLite the file's write lock is taken at
    /// once (BEGIN IMMEDIATE), so a second writer waits instead of failing late.
    pub fn write_transaction<T>(
        &self,
        f: impl FnOnce(&Conn) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        self.batch(match self.engine() {
            Engine::Sqlite => "BEGIN IMMEDIATE",
            Engine::Postgres => "BEGIN",
        })?;
        match f(self) {
            Ok(v) => {
                self.batch("COMMIT")?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Runs `f` inside a savepoint: its changes are kept only when it
    /// succeeds, the enclosing transaction goes on either way (PostgreSQL
    /// would otherwise refuse every later statement of the transaction).
    pub fn savepoint<T>(
        &self,
        f: impl FnOnce(&Conn) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        self.batch("SAVEPOINT callrec_sp")?;
        match f(self) {
            Ok(v) => {
                self.batch("RELEASE SAVEPOINT callrec_sp")?;
                Ok(v)
            }
            Err(e) => {
                let _ =
                    self.batch("ROLLBACK TO SAVEPOINT callrec_sp; RELEASE SAVEPOINT callrec_sp");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?12 AND e IS ?"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $12 AND e IS ?"
        );
    }

    #[test]
    fn values_convert_both_ways() {
        let r = Row(vec![
            Value::Int(3),
            Value::Null,
            Value::Bool(true),
            Value::Text("x".into()),
        ]);
        assert_eq!(r.get::<u32>(0).unwrap(), 3);
        assert_eq!(r.get::<Option<i64>>(1).unwrap(), None);
        assert!(r.get::<bool>(2).unwrap());
        assert_eq!(r.get::<i64>(2).unwrap(), 1);
        assert_eq!(r.get::<String>(3).unwrap(), "x");
        assert!(r.get::<i64>(3).is_err());
        assert!(r.get::<i64>(9).is_err());
        assert!(Row(vec![Value::Int(-1)]).get::<u32>(0).is_err());
    }
}
