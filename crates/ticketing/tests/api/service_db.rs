//! Opening a service's own database from a test (not in `apptest`, which the web tests share
//! and which has no sqlx).

/// A service's own database, as the marketplace with these settings uses it (one connection),
/// for tests that look at what a service stored.
pub async fn service_db(
    settings: &httpkit::settings::Settings,
    service: &str,
    migrator: &'static sqlx::migrate::Migrator,
) -> platform::db::Db {
    let url = platform::db::database_url(settings.database_url.as_deref(), &settings.data_dir, service);
    platform::db::Db::connect_with(&url, service, migrator, 1).await.expect("service database")
}
