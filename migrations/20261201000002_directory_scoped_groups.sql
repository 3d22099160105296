-- Directories are not interchangeable. With several allowed Entra directories a group grant
-- and an admin group name the directory they belong to (directory_tid), and match only tokens
-- of that directory: a group of one directory could carry another directory's group object id
-- (or, where Entra emits names, its name). mcp-authz refuses, with several directories, a group
-- grant or admin without one; with one directory it is that directory's.
ALTER TABLE group_tenants ADD COLUMN directory_tid uuid;
ALTER TABLE group_tenants DROP CONSTRAINT group_tenants_entra_group_id_tenant_key;
ALTER TABLE group_tenants ADD CONSTRAINT group_tenants_group_directory_tenant_key
    UNIQUE NULLS NOT DISTINCT (entra_group_id, directory_tid, tenant);
-- (PostgreSQL named the first migration's column check on directory_tid admins_check: it names
-- kind as well.)
ALTER TABLE admins DROP CONSTRAINT admins_check;
