//! Lua scripts called by hash (`EVALSHA`), and by their code (`EVAL`, which caches them) on a
//! node that does not know them: a restarted Redis, or a replica a failover just promoted.
//! redis-rs's own fallback sends `SCRIPT LOAD`, which a cluster client sends to every node and
//! which fails while any node is down; `EVAL` goes to the one node the keys name.

use redis::{Cmd, FromRedisValue, RedisResult, ToRedisArgs};

use super::connection::RedisConnection;

pub struct LuaScript {
    code: String,
    hash: String,
}

impl LuaScript {
    pub fn new(code: &str) -> Self {
        Self {
            hash: redis::Script::new(code).get_hash().to_string(),
            code: code.to_string(),
        }
    }

    /// A call to fill with keys and arguments, like `redis::Script::prepare_invoke`.
    pub fn prepare_invoke(&self) -> ScriptCall<'_> {
        ScriptCall {
            script: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

pub struct ScriptCall<'a> {
    script: &'a LuaScript,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl ScriptCall<'_> {
    /// `KEYS[i]`: on a cluster, the first one chooses the node.
    pub fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    pub async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut RedisConnection,
    ) -> RedisResult<T> {
        match self
            .command("EVALSHA", &self.script.hash)
            .query_async(conn)
            .await
        {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.command("EVAL", &self.script.code)
                    .query_async(conn)
                    .await
            }
            other => other,
        }
    }

    fn command(&self, name: &str, script: &str) -> Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(script).arg(self.keys.len());
        for key in &self.keys {
            cmd.arg(key.as_slice());
        }
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
        cmd
    }
}
