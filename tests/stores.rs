//! One test suite for the state-store traits, run against both implementations: this process
//! (memory and a file) and Redis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::RedisServer;
use hermes_ssh_gateway::identity::limits::{BanList, Bans};
use hermes_ssh_gateway::identity::redis::{Redis, RedisBans, RedisEnrollments, RedisTickets};
use hermes_ssh_gateway::identity::store::{Enrollment, EnrollmentStore, FileEnrollmentStore};
use hermes_ssh_gateway::identity::tickets::{
    MemoryTicketStore, Purpose, TicketRefusal, TicketStore,
};
use hermes_ssh_gateway::identity::{Identity, UserId};
use secrecy::ExposeSecret;

fn alice() -> Identity {
    Identity::from_mapped_key(UserId::parse("alice").unwrap(), "SHA256:abc".into())
}

async fn ticket_suite(store: Arc<dyn TicketStore>) {
    let t = store
        .mint(&alice(), Purpose::Pty, Duration::from_secs(30))
        .await
        .unwrap();
    let tok = t.expose_secret().to_owned();
    assert_eq!(store.consume(&tok, Purpose::Pty).await.unwrap(), alice());
    assert_eq!(
        store.consume(&tok, Purpose::Pty).await,
        Err(TicketRefusal::Used)
    );
    let t = store
        .mint(&alice(), Purpose::WebLogin, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        store.consume(t.expose_secret(), Purpose::Pty).await,
        Err(TicketRefusal::WrongPurpose)
    );
    assert_eq!(
        store.consume(t.expose_secret(), Purpose::WebLogin).await,
        Err(TicketRefusal::Used)
    );
    let t = store
        .mint(&alice(), Purpose::Pty, Duration::from_millis(200))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.consume(t.expose_secret(), Purpose::Pty).await,
        Err(TicketRefusal::Expired)
    );
    assert_eq!(
        store.consume(&"Z".repeat(43), Purpose::Pty).await,
        Err(TicketRefusal::Unknown)
    );
    // 100 concurrent consumers, one winner.
    let t = store
        .mint(&alice(), Purpose::Pty, Duration::from_secs(30))
        .await
        .unwrap();
    let tok = Arc::new(t.expose_secret().to_owned());
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (s, tok) = (store.clone(), tok.clone());
        tasks.push(tokio::spawn(async move {
            s.consume(&tok, Purpose::Pty).await.is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap() as usize;
    }
    assert_eq!(wins, 1);
}

async fn enrollment_suite(store: Arc<dyn EnrollmentStore>) {
    let e = Enrollment::new(&alice(), Duration::from_secs(60));
    store.bind("SHA256:k1", e.clone()).await.unwrap();
    assert_eq!(store.lookup("SHA256:k1").await.unwrap(), Some(e));
    assert_eq!(store.lookup("SHA256:other").await.unwrap(), None);
    let mut old = Enrollment::new(&alice(), Duration::from_secs(60));
    old.expires_at = old.enrolled_at - 1;
    store.bind("SHA256:old", old).await.unwrap();
    assert_eq!(
        store.lookup("SHA256:old").await.unwrap(),
        None,
        "expired bindings are void"
    );
    assert!(store.remove("SHA256:k1").await.unwrap());
    assert!(!store.remove("SHA256:k1").await.unwrap());
    assert_eq!(store.lookup("SHA256:k1").await.unwrap(), None);
}

async fn ban_suite(bans: Arc<dyn Bans>) {
    let ip = "127.0.0.42".parse().unwrap();
    assert!(!bans.failure(ip).await);
    bans.success(ip).await;
    assert!(!bans.failure(ip).await);
    assert!(!bans.failure(ip).await);
    assert!(!bans.is_banned(ip).await);
    assert!(bans.failure(ip).await, "the third failure bans");
    assert!(bans.is_banned(ip).await);
    assert!(!bans.is_banned("127.0.0.43".parse().unwrap()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend() {
    let dir = tempfile::tempdir().unwrap();
    ticket_suite(MemoryTicketStore::new()).await;
    enrollment_suite(Arc::new(FileEnrollmentStore::open(dir.path()).unwrap())).await;
    ban_suite(Arc::new(BanList::new(3, Duration::from_secs(60)))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend() {
    let server = RedisServer::start();
    let redis = Redis::open(&server.url().into()).unwrap();
    ticket_suite(Arc::new(RedisTickets(redis.clone()))).await;
    enrollment_suite(Arc::new(RedisEnrollments(redis.clone()))).await;
    ban_suite(Arc::new(RedisBans::new(redis, 3, Duration::from_secs(60)))).await;
}
