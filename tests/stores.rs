//! One test suite for the state-store traits, run against both implementations: this process
//! (memory and a file) and Redis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::RedisServer;
use hermes_ssh_gateway::identity::limits::{
    BanList, Bans, LimitError, PendingLimiter, PendingSlots,
};
use hermes_ssh_gateway::identity::redis::{
    Redis, RedisBans, RedisEnrollments, RedisPending, RedisTickets,
};
use hermes_ssh_gateway::identity::store::{
    Enrollment, EnrollmentStore, FileEnrollmentStore, RefreshToken,
};
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
        .mint(&alice(), Purpose::Pty, None, Duration::from_secs(30))
        .await
        .unwrap();
    let tok = t.expose_secret().to_owned();
    assert_eq!(
        store.consume(&tok, Purpose::Pty).await.unwrap().identity,
        alice()
    );
    assert_eq!(
        store.consume(&tok, Purpose::Pty).await,
        Err(TicketRefusal::Used)
    );
    // A ticket minted for one session names it when redeemed (the binding is in the store).
    let t = store
        .mint(
            &alice(),
            Purpose::Watch,
            Some("k3f9"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let r = store
        .consume(t.expose_secret(), Purpose::Watch)
        .await
        .unwrap();
    assert_eq!((r.identity, r.session.as_deref()), (alice(), Some("k3f9")));
    let t = store
        .mint(&alice(), Purpose::WebLogin, None, Duration::from_secs(30))
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
        .mint(&alice(), Purpose::Pty, None, Duration::ZERO)
        .await
        .unwrap();
    // A ticket whose lifetime is over at once: expired, with no time slept out.
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
        .mint(&alice(), Purpose::Pty, None, Duration::from_secs(30))
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
    // With a refresh token (offline_access), which must come back as it went in.
    let mut e = Enrollment::new(&alice(), Duration::from_secs(60));
    e.refresh_token = Some(RefreshToken::new("rt-secret".into()));
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
    // Listed per user; a login is recorded without rewriting the binding.
    let listed = store.list(Some(&alice().user_id)).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].0, "SHA256:k1");
    assert!(store
        .list(Some(&UserId::parse("bob").unwrap()))
        .await
        .unwrap()
        .is_empty());
    store.touch("SHA256:k1").await.unwrap();
    assert!(store
        .lookup("SHA256:k1")
        .await
        .unwrap()
        .unwrap()
        .last_used
        .is_some());
    assert!(store.remove("SHA256:k1").await.unwrap());
    assert!(!store.remove("SHA256:k1").await.unwrap());
    // A login racing a revocation does not bring the binding back.
    store.touch("SHA256:k1").await.unwrap();
    assert_eq!(store.lookup("SHA256:k1").await.unwrap(), None);
    assert!(store.list(None).await.unwrap().is_empty());
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

/// Pending slots, for both backends: caps, release, and (the attack) slots a dead node never
/// released stop counting after the TTL, however busy the other nodes keep the counters, and a
/// late release cannot push a count below zero.
async fn pending_suite(make: impl Fn(Duration) -> Arc<dyn PendingSlots>, shared_ttl: bool) {
    let ip: std::net::IpAddr = "127.0.0.7".parse().unwrap();
    let slots = make(Duration::from_secs(60));
    let a = slots.acquire(Some(ip)).await.unwrap();
    let _b = slots.acquire(Some(ip)).await.unwrap();
    assert_eq!(
        slots.acquire(Some(ip)).await.unwrap_err(),
        LimitError::PerAddress(2)
    );
    drop(a);
    assert!(
        common::eventually_async(Duration::from_secs(5), || async {
            slots.acquire(Some(ip)).await.map(std::mem::forget).is_ok()
        })
        .await,
        "a released slot is free again"
    );
    if !shared_ttl {
        return;
    }
    // A node dies holding slots: its permits are never dropped.
    let dead = make(Duration::from_millis(300));
    let other: std::net::IpAddr = "127.0.0.8".parse().unwrap();
    std::mem::forget(dead.acquire(Some(other)).await.unwrap());
    std::mem::forget(dead.acquire(Some(other)).await.unwrap());
    let busy = make(Duration::from_secs(60));
    // Other nodes keep acquiring from the same address meanwhile (each try is refused while
    // the leaked slots count, and must not extend their life).
    let freed = common::eventually_async(Duration::from_secs(15), || async {
        match busy.acquire(Some(other)).await {
            Ok(p) => {
                drop(p);
                true
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(freed, "slots of a dead node expire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_slots_memory() {
    pending_suite(|_| Arc::new(PendingLimiter::new(100, 2)), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_slots_redis_expire_and_never_go_negative() {
    let server = RedisServer::start();
    let redis = Redis::open(&server.url().into()).unwrap();
    let r = redis.clone();
    pending_suite(
        move |ttl| Arc::new(RedisPending::new(r.clone(), 100, 2, ttl)),
        true,
    )
    .await;
    // Releases after expiry leave nothing behind: no key holds a negative or stale count.
    let slots = RedisPending::new(redis.clone(), 100, 2, Duration::from_millis(100));
    let ip: std::net::IpAddr = "127.0.0.9".parse().unwrap();
    let p = slots.acquire(Some(ip)).await.unwrap();
    let key = "hermes:pending:ip:127.0.0.9";
    let kind = || async {
        let k: String = redis.query(redis::cmd("TYPE").arg(key)).await.unwrap();
        k
    };
    assert_eq!(kind().await, "zset");
    assert!(
        common::eventually_async(Duration::from_secs(10), || async { kind().await == "none" })
            .await,
        "the entry expires by itself"
    );
    drop(p);
    // The late release must not recreate the key (a DECR would have left -1 with no expiry).
    tokio::task::yield_now().await;
    let n: i64 = redis.query(redis::cmd("EXISTS").arg(key)).await.unwrap();
    assert_eq!(n, 0);
}
