//! `quartet identity ...`: `keystone-manage bootstrap` and the few commands to create
//! users, projects and role assignments in the embedded store. The database is the
//! config's `identity.database` (after `QUARTET_IDENTITY_DATABASE`), or the default
//! `sqlite://quartet.db` when the config has no `[identity]`. Exit status 0, or 64 for a
//! config or an argument that cannot work (a name not found, a name taken), 1 when the
//! store fails.

use crate::cli::EXIT_CONFIG;
use clap::Subcommand;
use quartet_identity::store::{Store, Target};
use quartet_identity::StoreError;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// As `keystone-manage bootstrap`: domain Default, roles, user and project admin.
    Bootstrap {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The admin password (set even when admin exists); generated and printed
        /// once when absent and admin is new.
        #[arg(long, env = "QUARTET_ADMIN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Projects.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Role assignments.
    Role {
        #[command(subcommand)]
        command: RoleCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Creates a user; prints its id.
    Create {
        name: String,
        #[arg(long)]
        password: String,
        /// Domain id or name.
        #[arg(long, default_value = "default")]
        domain: String,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Creates a project; prints its id.
    Create {
        name: String,
        /// Domain id or name.
        #[arg(long, default_value = "default")]
        domain: String,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Grants a role to a user on a project, a domain (`--on-domain`) or the system
    /// (`--system`), as `openstack role add` (names or ids).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["project", "on_domain", "system"])))]
    Add {
        #[arg(long)]
        user: String,
        #[arg(long)]
        project: Option<String>,
        /// The domain (id or name) the role is granted on, for domain-scoped tokens.
        #[arg(long, value_name = "DOMAIN")]
        on_domain: Option<String>,
        /// The role is granted on the system, for system-scoped tokens.
        #[arg(long)]
        system: bool,
        #[arg(long)]
        role: String,
        /// Domain (id or name) of the user and project names.
        #[arg(long, default_value = "default")]
        domain: String,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn config_of(command: &IdentityCommand) -> Option<&PathBuf> {
    match command {
        IdentityCommand::Bootstrap { config, .. }
        | IdentityCommand::User {
            command: UserCommand::Create { config, .. },
        }
        | IdentityCommand::Project {
            command: ProjectCommand::Create { config, .. },
        }
        | IdentityCommand::Role {
            command: RoleCommand::Add { config, .. },
        } => config.as_ref(),
    }
}

/// Runs one identity command; returns the exit status.
pub fn main(command: IdentityCommand) -> ExitCode {
    let loaded = match crate::config::load(config_of(&command).map(PathBuf::as_path)) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let database = match &loaded.config.identity {
        Some(identity) => identity.database.clone(),
        None => std::env::var(super::DATABASE_VAR)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| quartet_identity::IdentityConfig::default().database),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("quartet: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let store = match Store::connect(&database).await {
            Ok(store) => store,
            Err(err) => {
                eprintln!(
                    "quartet: identity.database {}: {}",
                    crate::config::redact_url(&database),
                    crate::error::Chain(&err)
                );
                return ExitCode::FAILURE;
            }
        };
        let result = run(&store, command).await;
        store.close().await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("quartet: {}", crate::error::Chain(&err));
                if err.is_not_found() || err.is_conflict() {
                    ExitCode::from(EXIT_CONFIG)
                } else {
                    ExitCode::FAILURE
                }
            }
        }
    })
}

async fn domain_id(store: &Store, domain: &str) -> Result<String, StoreError> {
    match store.domain(domain).await {
        Ok(d) => Ok(d.id),
        Err(e) if e.is_not_found() => Ok(store.domain_by_name(domain).await?.id),
        Err(e) => Err(e),
    }
}

async fn run(store: &Store, command: IdentityCommand) -> Result<(), StoreError> {
    match command {
        IdentityCommand::Bootstrap { password, .. } => {
            let done = quartet_identity::bootstrap::bootstrap(store, password.as_deref()).await?;
            println!(
                "bootstrapped: user admin ({}), project admin ({})",
                done.admin_user_id, done.admin_project_id
            );
            if let Some(generated) = &done.generated_password {
                println!("admin password (shown once): {generated}");
            }
        }
        IdentityCommand::User {
            command:
                UserCommand::Create {
                    name,
                    password,
                    domain,
                    ..
                },
        } => {
            let domain = domain_id(store, &domain).await?;
            let user = store
                .create_user(None, &name, &domain, Some(&password))
                .await?;
            println!("{}", user.id);
        }
        IdentityCommand::Project {
            command: ProjectCommand::Create { name, domain, .. },
        } => {
            let domain = domain_id(store, &domain).await?;
            let project = store.create_project(None, &name, &domain).await?;
            println!("{}", project.id);
        }
        IdentityCommand::Role {
            command:
                RoleCommand::Add {
                    user,
                    project,
                    on_domain,
                    system,
                    role,
                    domain,
                    ..
                },
        } => {
            let domain = domain_id(store, &domain).await?;
            let user = match store.user(&user).await {
                Ok(u) => u,
                Err(e) if e.is_not_found() => store.user_by_name(&domain, &user).await?,
                Err(e) => return Err(e),
            };
            let (target, what) = match (project, on_domain) {
                (Some(project), _) => {
                    let project = match store.project(&project).await {
                        Ok(p) => p,
                        Err(e) if e.is_not_found() => {
                            store.project_by_name(&domain, &project).await?
                        }
                        Err(e) => return Err(e),
                    };
                    let what = format!("project {}", project.name);
                    (Target::Project(project.id), what)
                }
                (None, Some(on)) => {
                    let id = domain_id(store, &on).await?;
                    let what = format!("domain {on}");
                    (Target::Domain(id), what)
                }
                // clap's group: one of --project, --on-domain, --system.
                (None, None) => {
                    debug_assert!(system);
                    (Target::System, "the system".to_owned())
                }
            };
            let role = store.role_by_name(&role).await?;
            store.grant(&user.id, &target, &role.id).await?;
            println!("granted {} to user {} on {what}", role.name, user.name);
        }
    }
    Ok(())
}
