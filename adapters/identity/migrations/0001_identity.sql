-- Portable SQL: the same text runs on SQLite, PostgreSQL and MySQL/MariaDB.
-- Strings are VARCHAR (MySQL cannot index TEXT), integers BIGINT, booleans 0/1,
-- times microseconds since the epoch.
CREATE TABLE identity_domain (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    enabled BIGINT NOT NULL,
    description VARCHAR(255) NOT NULL,
    created_at BIGINT NOT NULL,
    CONSTRAINT identity_domain_name UNIQUE (name)
);
CREATE TABLE identity_project (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    domain_id VARCHAR(64) NOT NULL,
    enabled BIGINT NOT NULL,
    description VARCHAR(255) NOT NULL,
    created_at BIGINT NOT NULL,
    CONSTRAINT identity_project_name UNIQUE (domain_id, name),
    CONSTRAINT identity_project_domain FOREIGN KEY (domain_id) REFERENCES identity_domain (id)
);
CREATE TABLE identity_user (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    domain_id VARCHAR(64) NOT NULL,
    password_hash VARCHAR(255),
    enabled BIGINT NOT NULL,
    default_project_id VARCHAR(64),
    created_at BIGINT NOT NULL,
    CONSTRAINT identity_user_name UNIQUE (domain_id, name),
    CONSTRAINT identity_user_domain FOREIGN KEY (domain_id) REFERENCES identity_domain (id)
);
CREATE TABLE identity_role (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    created_at BIGINT NOT NULL,
    CONSTRAINT identity_role_name UNIQUE (name)
);
CREATE TABLE identity_assignment (
    user_id VARCHAR(64) NOT NULL,
    target_type VARCHAR(16) NOT NULL,
    target_id VARCHAR(64) NOT NULL,
    role_id VARCHAR(64) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, target_type, target_id, role_id),
    CONSTRAINT identity_assignment_user FOREIGN KEY (user_id) REFERENCES identity_user (id),
    CONSTRAINT identity_assignment_role FOREIGN KEY (role_id) REFERENCES identity_role (id)
);
CREATE TABLE identity_revocation (
    id VARCHAR(64) NOT NULL PRIMARY KEY,
    audit_id VARCHAR(64) NOT NULL,
    user_id VARCHAR(64),
    issued_before BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX identity_revocation_revoked_at ON identity_revocation (revoked_at);
CREATE TABLE identity_implied_role (
    prior_role_id VARCHAR(64) NOT NULL,
    implied_role_id VARCHAR(64) NOT NULL,
    PRIMARY KEY (prior_role_id, implied_role_id),
    CONSTRAINT identity_implied_prior FOREIGN KEY (prior_role_id) REFERENCES identity_role (id),
    CONSTRAINT identity_implied_implied FOREIGN KEY (implied_role_id) REFERENCES identity_role (id)
);
