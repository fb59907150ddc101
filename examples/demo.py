"""The embedded-default demo: no server, everything under ./.superduper/.

Run it with:  python examples/demo.py
"""

from __future__ import annotations

import pickle

from superduper import DataType, Table, superduper


def main() -> None:
    db = superduper()  # SQLite database and filesystem artifact store under ./.superduper/
    print('connected:', db.databackend, db.artifact_store, db.compute, sep='\n  ')

    # a typed table: a string id is filled in for every row that lacks one
    notes = DataType('note', encoder=lambda x, info: pickle.dumps(x), decoder=lambda b, info: pickle.loads(b),
                     encodable='artifact')
    db.apply(Table('products', fields={'name': 'str', 'brand': 'str', 'price': 'float',
                                      'embedding': 'vector[float32:3]', 'notes': notes}))
    products = db['products']
    products.delete().execute()  # the demo can be run again
    ids = products.insert([
        {'name': 'Pegasus', 'brand': 'Nike', 'price': 120.0, 'embedding': [0.1, 0.9, 0.0], 'notes': {'sizes': [41, 42]}},
        {'name': 'Ultraboost', 'brand': 'Adidas', 'price': 180.0, 'embedding': [0.2, 0.8, 0.1]},
        {'name': 'Vaporfly', 'brand': 'Nike', 'price': 250.0, 'embedding': [0.0, 1.0, 0.3]},
    ]).execute()
    print(f'\ninserted {len(ids)} rows; ids like {ids[0]}')

    # queries are lazy: build, then execute
    nike = products.filter((products['brand'] == 'Nike') & (products['price'] < 200)).select('name', 'price')
    print('Nike under 200:', nike.execute().tolist())
    print('rows:', products.count().execute())
    first = products.get(id=ids[0]).execute()
    print('vector comes back as numpy:', repr(first['embedding']))
    print('notes were kept in the artifact store and decoded on read:', first['notes'])

    products.filter(products['name'] == 'Vaporfly').update({'price': 199.0}).execute()
    print('after update:', products.filter(products['price'] < 200).select('name').execute().tolist())

    print('\ncomponents:', db.show())
    db.close()


if __name__ == '__main__':
    main()
