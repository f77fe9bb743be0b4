-- A small fictional shop: the database every episode of sqlite_env/ShopSQL-v0 queries.
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);
CREATE TABLE orders (
  id INTEGER PRIMARY KEY,
  customer_id INTEGER NOT NULL REFERENCES customers(id),
  product TEXT NOT NULL,
  quantity INTEGER NOT NULL,
  unit_price INTEGER NOT NULL  -- in cents
);
INSERT INTO customers VALUES
  (1, 'Ilse Varga', 'Porto'), (2, 'Tomas Quell', 'Lyon'), (3, 'Mira Okafor', 'Porto'),
  (4, 'Deniz Arlen', 'Graz'), (5, 'Sana Holt', 'Lyon'), (6, 'Rafe Lindqvist', 'Turku'),
  (7, 'Oona Brandt', 'Graz'), (8, 'Kofi Maren', 'Porto');
INSERT INTO orders VALUES
  (1, 1, 'lamp', 2, 1899), (2, 1, 'kettle', 1, 3450), (3, 2, 'lamp', 1, 1899),
  (4, 3, 'teapot', 3, 2275), (5, 3, 'kettle', 2, 3450), (6, 3, 'mug', 6, 499),
  (7, 4, 'mug', 4, 499), (8, 5, 'blanket', 1, 5900), (9, 5, 'lamp', 3, 1899),
  (10, 6, 'teapot', 1, 2275), (11, 6, 'mug', 12, 499), (12, 7, 'kettle', 1, 3450),
  (13, 7, 'blanket', 2, 5900), (14, 8, 'lamp', 1, 1899), (15, 8, 'mug', 2, 499),
  (16, 2, 'blanket', 1, 5900), (17, 4, 'teapot', 2, 2275), (18, 1, 'mug', 3, 499);
